"""The activator: stands in a ModelService's data path while nothing of it is ready (scale to zero).

It holds Triton requests (KServe v2 HTTP and gRPC), tells the operator at once that there is demand (GET
/demand, a long poll the operator reads), and forwards each held request once Triton says the *model* is ready
on one of the ModelService's targets. docs/scale-to-zero.md has the design; routing.py the pure decisions."""
