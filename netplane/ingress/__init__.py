"""The Ingress controller: Kubernetes Ingress v1 semantics served by a dedicated nginx (see README.md).

- ``model``: class selection, parsing and annotations; what makes an Ingress rejected.
- ``routes``: the pure route table, (host, path) -> backend, merging and TLS binding.
- ``backends``: Service ports to upstream servers (ClusterIP or endpoints).
- ``tls``: TLS Secrets to PEM bundles.
- ``render``: the route table as one nginx configuration, every line traced to its Ingresses.
- ``nginx``: the controller's own nginx process (check, install, graceful reload, adopt, stop).
- ``controller``: informers -> plan -> apply -> Events and status (``netplane ingress``).
- ``lab``: the controller in a lab cluster and the demo's blue/green step.
"""
