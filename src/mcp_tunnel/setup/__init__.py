"""The setup component (SPEC §10): from an identity token to a running tunnel's credentials.

`init` exchanges a workload's OIDC token (or uses a Tunnels API key), creates or attaches to a
tunnel, makes and registers a CA, fetches the tunnel token and writes everything to one output;
`renew-cert` re-issues the server certificate from the stored CA without any API call.

Layout: `cli` (flags and environment -> options), `plan` (pure decisions), `init` / `renew`
(the two flows), `api` + `wif` + `transport` + `retry` (talking to Anthropic), `outputs` + `k8s`
(where the results go), `state` (what a previous run left behind).
"""
