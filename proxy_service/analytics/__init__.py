"""The analytics wing: everything that reads the recorded calls back.

Queries over the raw tables and the pre-aggregates that keep them fast (`preagg` and its reader `preagg_read`, its lifecycle `rollup`, `histogram`, `buckets`),
Explore's slicing (`explore`), the pool views (`pool_queries`), user SQL (`sql_guard`, and `sql_sandbox` with its
`sql_worker` processes) and Parquet exports with retention (`snapshot`). Nothing here sits on the request path:
the data plane appends events, this wing reads them.
"""
