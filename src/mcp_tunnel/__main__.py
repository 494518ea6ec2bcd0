from mcp_tunnel.cli import main

raise SystemExit(main())
