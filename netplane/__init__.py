"""netplane: the Linux data plane of a Kubernetes-style cluster."""

__version__ = "0.1.0"
