"""modelops: a Kubernetes operator for training, serving, canarying and autoscaling models."""

GROUP = "modelops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
