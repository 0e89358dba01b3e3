"""The service proxy (the kube-proxy role).

    model.py      typed views over Service / EndpointSlice JSON: ServicePort, Endpoint
    changes.py    change trackers ({previous, current} per service, flapping cancels)
    selection.py  which endpoints traffic may use (ready / terminating, traffic policies)
    state.py      ProxyConfig + ProxyState: what the renderers read
    iptables.py   pure renderer -> iptables-restore --noflush text (partial sync aware)
    nftables.py   pure renderer -> one nft transaction (partial sync aware)
    conntrack.py  pure planning of stale UDP conntrack deletions
    tracer.py     pure packet tracer over either mode's rendered rules
    proxier.py    the Backend boundary (iptables, nftables; IPVS slots in here) and the sync function
    runner.py     bounded-frequency runner
    health.py     /healthz and health check node ports; metrics.py: /metrics
    daemon.py     informers -> proxier -> runner (the `netplane proxy` command)
    fixtures.py   builders of Service / EndpointSlice dicts for tests and benchmarks
"""
