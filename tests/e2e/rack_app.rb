# A Rack application that answers with what Rack parsed: the method after
# Rack::MethodOverride, the path, the params (query and form body, last value wins) and
# the HTTP_* headers. Usage: ruby rack_app.rb PORT
require "json"
require "rack"
require "webrick"

port = Integer(ARGV.fetch(0))
app = Rack::Builder.new do
  use Rack::MethodOverride
  run lambda { |env|
    request = Rack::Request.new(env)
    params = begin
      request.params
    rescue StandardError => e
      { "_rack_error" => e.class.name }
    end
    seen = {
      method: request.request_method,
      path: request.path_info,
      params: params,
      headers: env.select { |k, _| k.start_with?("HTTP_") },
    }
    [200, { "Content-Type" => "application/json" }, [JSON.generate(seen)]]
  }
end
Rack::Handler::WEBrick.run(app, Port: port, BindAddress: "127.0.0.1", AccessLog: [],
                                Logger: WEBrick::Log.new(nil, 0))
