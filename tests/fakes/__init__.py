"""Local fakes of the services mcp-tunnel talks to, each a real server on 127.0.0.1.

- `oidc.FakeOIDCIssuer`: an OIDC issuer whose JWKS signs real JWTs.
- `anthropic.FakeAnthropic`: the Tunnels API and the WIF token exchange, with the documented
  objects, errors and limits, plus fault injection (status storms, dropped connections).
- `kubernetes.FakeKubernetes`: the Secret endpoints of the Kubernetes API over HTTPS with a
  test CA and a real bearer-token check.

Reusable by the setup tests, the doctor and the demo.
"""
