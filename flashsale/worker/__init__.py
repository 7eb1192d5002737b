"""The Celery worker of the charge pipeline: app (config + factory), main (the process), tasks.

READY_LINE lives here, free of imports, so supervisors can wait for it without loading Celery.
"""

# The line a worker prints once it consumes; supervisors (rehearse, the tests, the benchmarks)
# wait for it before sending work.
READY_LINE = "flashsale worker ready"
