"""HTTP routers: parse a request, call `serve.service`, render the answer. Nothing else."""
