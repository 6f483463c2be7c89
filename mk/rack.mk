# The Rack application tests/e2e/test_rack_upstream.py runs behind jobgate (Debian's
# ruby-rack on WEBrick). Installed through apt-get when root; the test skips without ruby.
INSTALL_TARGETS += rack

.PHONY: rack

rack:
	@ruby -e 'require "rack"; require "webrick"' >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing: ruby-rack ruby-webrick"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      ruby-rack ruby-webrick; \
	  else \
	    echo "the Rack upstream test needs: sudo apt-get install -y ruby-rack ruby-webrick" >&2; \
	  fi; }
