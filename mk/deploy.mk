# The deploy-file tests (tests/test_deploy.py, tests/test_alerts.py, tests/e2e/test_prometheus.py)
# drive Prometheus and promtool, docker-compose (config checks only: no engine) and lighttpd.
APT_NEEDS += prometheus:prometheus promtool:prometheus docker-compose:docker-compose lighttpd:lighttpd
