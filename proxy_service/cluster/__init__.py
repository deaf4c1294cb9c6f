"""Cluster mode: several `keyrack serve` replicas share the pool state in Redis and write their events into one
DuckLake whose catalog is PostgreSQL. Imported only when KEYRACK_REDIS_URL, KEYRACK_LAKE_CATALOG and
KEYRACK_LAKE_DATA are set (config.py alone is imported always: it decides)."""
