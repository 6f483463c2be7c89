# Redis Sentinel for the failover tests (tests/e2e/test_failover.py): Debian's redis-sentinel.
APT_NEEDS += redis-sentinel:redis-sentinel
