//! Config validation in process: every broken config is refused with a message that names the
//! file, the line and the key (`bearward check` prints the same text; tests/cli.rs runs it end
//! to end).

use bearward::config::Config;

/// A minimal valid config: the broken-config cases each change one thing in it.
const GOOD: &str = include_str!("fixtures/good.toml");

#[test]
fn broken_configs_are_rejected_naming_the_key() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("typo in a route key", "scopes = [\"read\"]", "scoeps = [\"read\"]", "scoeps"),
        // Serde's own errors: the whole key path (which route), the closest known key, and
        // the list form of a string where a list goes.
        ("typo, named with its route", "scopes = [\"read\"]", "scoeps = [\"read\"]", "routes[1].scoeps: unknown field"),
        ("typo, and the key meant", "scopes = [\"read\"]", "scoeps = [\"read\"]", "did you mean `scopes`?"),
        ("typo in an inline table", "scopes = [\"read\"]", "scopes = [\"read\"]\nrate_limit = { key = \"ip\", rat = \"1/s\" }", "routes[1].rate_limit: unknown field `rat`, expected one of `key`, `rate`, `burst`, `ipv6_prefix`, `rate_by`, `rates`; did you mean `rate`?"),
        ("typo in a table", "listen = \"127.0.0.1:0\"", "listne = \"127.0.0.1:0\"", "did you mean `listen`?"),
        ("a string where a list goes", "scopes = [\"read\"]", "scopes = \"read\"", "routes[1].scopes: invalid type: string \"read\", expected a sequence: a list, even of one, `scopes = [\"read\"]`"),
        ("unknown top-level key", "[server]", "[sever]\nx=1\n[server]", "sever"),
        ("missing upstream", "upstream = \"app\"\nauth = \"none\"", "upstream = \"nope\"\nauth = \"none\"", "routes[0].upstream"),
        ("cluster and one node", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_cluster_urls = [\"redis://127.0.0.1:7000\"]\n\n[server]", "cache.redis_cluster_urls: give either"),
        ("cluster node on a unix socket", "[server]", "[cache]\nredis_cluster_urls = [\"redis+unix:///run/redis.sock\"]\n\n[server]", "cache.redis_cluster_urls[0]"),
        ("cluster of mixed TLS", "[server]", "[cache]\nredis_cluster_urls = [\"redis://127.0.0.1:7000\", \"rediss://127.0.0.1:7001\"]\n\n[server]", "different TLS modes"),
        ("a store user without a password", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_username = \"bearward\"\n\n[server]", "cache.redis_username: needs redis_password_file"),
        ("a store user name with a space", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_username = \"bear ward\"\nredis_password_file = \"tests/fixtures/redis-password\"\n\n[server]", "cache.redis_username: must be a user name without spaces"),
        ("a short store secret", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nsecret_file = \"tests/fixtures/redis-password\"\n\n[server]", "cache.secret: must be at least 32 bytes"),
        ("a store secret from a file and the environment", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nsecret_file = \"tests/fixtures/store-secret\"\nsecret_env = \"BW_STORE\"\n\n[server]", "cache.secret: give only one of"),
        ("sentinels and one node", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_sentinel_urls = [\"redis://127.0.0.1:26379\"]\nredis_sentinel_master = \"mymaster\"\n\n[server]", "cache.redis_sentinel_urls: give either redis_sentinel_urls (a master the sentinels name) or redis_url"),
        ("sentinels and a cluster", "[server]", "[cache]\nredis_sentinel_urls = [\"redis://127.0.0.1:26379\"]\nredis_sentinel_master = \"mymaster\"\nredis_cluster_urls = [\"redis://127.0.0.1:7000\"]\n\n[server]", "cache.redis_sentinel_urls: give either redis_sentinel_urls (a master the sentinels name) or redis_cluster_urls"),
        ("sentinels without the master's name", "[server]", "[cache]\nredis_sentinel_urls = [\"redis://127.0.0.1:26379\"]\n\n[server]", "cache.redis_sentinel_master: is needed with redis_sentinel_urls"),
        ("an empty master name", "[server]", "[cache]\nredis_sentinel_urls = [\"redis://127.0.0.1:26379\"]\nredis_sentinel_master = \" \"\n\n[server]", "cache.redis_sentinel_master: must not be empty"),
        ("a master name without sentinels", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_sentinel_master = \"mymaster\"\n\n[server]", "cache.redis_sentinel_master: only applies with redis_sentinel_urls"),
        ("a sentinel password without sentinels", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_sentinel_password_env = \"PW\"\n\n[server]", "cache.redis_sentinel_password_env: only applies with redis_sentinel_urls"),
        ("a sentinel URL with a database", "[server]", "[cache]\nredis_sentinel_urls = [\"redis://127.0.0.1:26379/2\"]\nredis_sentinel_master = \"mymaster\"\n\n[server]", "cache.redis_sentinel_urls[0]: a sentinel has no database"),
        ("a sentinel URL with a password", "[server]", "[cache]\nredis_sentinel_urls = [\"redis://127.0.0.1:26379\", \"redis://:hunter2@127.0.0.1:26380\"]\nredis_sentinel_master = \"mymaster\"\n\n[server]", "cache.redis_sentinel_urls[1]: holds credentials"),
        ("sentinels of mixed TLS", "[server]", "[cache]\nredis_sentinel_urls = [\"redis://127.0.0.1:26379\", \"rediss://127.0.0.1:26380\"]\nredis_sentinel_master = \"mymaster\"\n\n[server]", "cache.redis_sentinel_urls[1]: use one scheme"),
        ("a sentinel on a unix socket", "[server]", "[cache]\nredis_sentinel_urls = [\"redis+unix:///run/sentinel.sock\"]\nredis_sentinel_master = \"mymaster\"\n\n[server]", "cache.redis_sentinel_urls[0]: is not a redis:// or rediss:// URL"),
        ("rediss keys on redis", "[server]", "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_client_cert_file = \"tests/fixtures/tls/client.pem\"\nredis_client_key_file = \"tests/fixtures/tls/client-key.pem\"\n\n[server]", "cache.redis_client_cert_file: only applies to a rediss:// url"),
        ("https proxy", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nproxy = \"https://egress.test:3128\"", "issuers[0].proxy: is not an http://host:port proxy URL"),
        ("proxy with a path", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nproxy = \"http://egress.test:3128/x\"", "issuers[0].proxy"),
        ("bad duration", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nleeway = \"thirty\"", "issuers[0].leeway"),
        ("a host with a port", "prefix = \"/api\"", "prefix = \"/api\"\nhosts = [\"api.test\", \"api.test:443\"]", "routes[1].hosts[1]: \"api.test:443\": no port"),
        ("a wildcard inside a host", "prefix = \"/api\"", "prefix = \"/api\"\nhosts = [\"api.*.test\"]", "routes[1].hosts[0]: \"api.*.test\": `*` only as a whole first label"),
        ("a host with an empty label", "prefix = \"/api\"", "prefix = \"/api\"\nhosts = [\"api..test\"]", "routes[1].hosts[0]"),
        ("no hosts", "prefix = \"/api\"", "prefix = \"/api\"\nhosts = []", "routes[1].hosts: an empty list takes no request"),
        ("no source ranges", "prefix = \"/api\"", "prefix = \"/api\"\nsource_ranges = []", "routes[1].source_ranges: an empty list takes no request"),
        ("a source range that is no address", "prefix = \"/api\"", "prefix = \"/api\"\nsource_ranges = [\"10.0.0.0/8\", \"office\"]", "routes[1].source_ranges[1]: \"office\" is not an IP address or CIDR block"),
        ("a CORS origin with a path", "prefix = \"/api\"", "prefix = \"/api\"\ncors = { allow_origins = [\"https://app.example.com/\"] }", "routes[1].cors.allow_origins[0]: \"https://app.example.com/\" is not an origin"),
        ("any CORS origin with credentials", "prefix = \"/api\"", "prefix = \"/api\"\ncors = { allow_origins = [\"*\"], allow_credentials = true }", "routes[1].cors.allow_origins[0]: \"*\" with allow_credentials"),
        ("a CORS method the route does not take", "prefix = \"/api\"", "prefix = \"/api\"\nmethods = [\"GET\"]\ncors = { allow_origins = [\"*\"], allow_methods = [\"DELETE\"] }", "routes[1].cors.allow_methods[0]: DELETE is not among the route's methods"),
        ("a mistyped CORS key", "prefix = \"/api\"", "prefix = \"/api\"\ncors = { allow_origin = [\"*\"] }", "unknown field `allow_origin`"),
        ("a CORS max age past a day", "prefix = \"/api\"", "prefix = \"/api\"\ncors = { allow_origins = [\"*\"], max_age = \"2d\" }", "routes[1].cors.max_age"),
        ("a token header that is no header name", "prefix = \"/api\"", "prefix = \"/api\"\ntoken_header = \"X Token\"", "routes[1].token_header: \"X Token\" is not a header name"),
        ("Authorization as the token header", "prefix = \"/api\"", "prefix = \"/api\"\ntoken_header = \"authorization\"", "routes[1].token_header: Authorization is where a route reads its token anyway"),
        ("a hop-by-hop token header", "prefix = \"/api\"", "prefix = \"/api\"\ntoken_header = \"Connection\"", "routes[1].token_header: connection is a hop-by-hop header"),
        ("a cookie name that is no token", "prefix = \"/api\"", "prefix = \"/api\"\ntoken_cookie = \"a=b\"", "routes[1].token_cookie: \"a=b\" is not a cookie name"),
        ("a token cookie and a token header", "prefix = \"/api\"", "prefix = \"/api\"\ntoken_header = \"X-Token\"\ntoken_cookie = \"at\"", "routes[1].token_cookie: a route reads its token from one place"),
        ("a token cookie on an open route", "upstream = \"app\"\nauth = \"none\"", "upstream = \"app\"\nauth = \"none\"\ntoken_cookie = \"at\"", "routes[0].token_cookie: only applies to routes that read a token"),
        ("a login URL that is not absolute", "prefix = \"/api\"", "prefix = \"/api\"\nlogin_url = \"/login?rd={url}\"", "routes[1].login_url: \"/login?rd={url}\" is not an absolute http(s) URL"),
        ("a login URL with two holes", "prefix = \"/api\"", "prefix = \"/api\"\nlogin_url = \"https://a.test/?rd={url}&b={url}\"", "routes[1].login_url: {url} may appear once"),
        ("a login URL on an open route", "upstream = \"app\"\nauth = \"none\"", "upstream = \"app\"\nauth = \"none\"\nlogin_url = \"https://a.test/\"", "routes[0].login_url: only routes that read a token (auth = \"bearer\" or \"optional\") answer 401"),
        ("an exception that is no address", "prefix = \"/api\"", "prefix = \"/api\"\nsource_ranges = [\"10.0.0.0/8\", \"!10.9/16\"]", "routes[1].source_ranges[1]: \"10.9/16\" is not an IP address or CIDR block"),
        ("a token header on an open route", "upstream = \"app\"\nauth = \"none\"", "upstream = \"app\"\nauth = \"none\"\ntoken_header = \"X-Token\"", "routes[0].token_header: only applies to routes that read a token"),
        ("a route timeout past an hour", "prefix = \"/api\"", "prefix = \"/api\"\nrequest_timeout = \"2h\"", "routes[1].request_timeout"),
        ("no request per connection", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmax_requests_per_connection = 0", "server.max_requests_per_connection: 0 is out of range (1 to 1000000000)"),
        ("a client connection age past 30 days", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmax_connection_age = \"31d\"", "server.max_connection_age: \"31d\" is out of range (1s to 30days)"),
        ("a balancer that is no address", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nproxy_protocol_from = [\"10.0.0.0/24\", \"nlb\"]", "server.proxy_protocol_from[1]: \"nlb\" is not an IP address or CIDR block"),
        ("a source range past its family's length", "prefix = \"/api\"", "prefix = \"/api\"\nsource_ranges = [\"10.0.0.0/33\"]", "routes[1].source_ranges[0]"),
        ("hosts behind nginx without the original host", "[[routes]]\nprefix = \"/api\"", "[decision]\nlisten = \"127.0.0.1:0\"\ningress = \"nginx\"\n\n[[routes]]\nprefix = \"/api\"\nhosts = [\"api.test\"]", "decision.original_host_header: is required"),
        ("the original host header behind Caddy", "[server]", "[decision]\nlisten = \"127.0.0.1:0\"\ningress = \"caddy\"\noriginal_host_header = \"X-Original-Host\"\n\n[server]", "decision.original_host_header: is not read with ingress = \"caddy\""),
        ("a rewrite on an exact path", "prefix = \"/api\"", "path = \"/api\"\nprefix_rewrite = \"/\"", "routes[1].prefix_rewrite: only applies to a route with `prefix`"),
        ("a rewrite with dot segments", "prefix = \"/api\"", "prefix = \"/api\"\nprefix_rewrite = \"/v2/../x\"", "routes[1].prefix_rewrite: must be a canonical absolute path"),
        ("a rewrite with a query", "prefix = \"/api\"", "prefix = \"/api\"\nprefix_rewrite = \"/v2?x=1\"", "routes[1].prefix_rewrite: must be a canonical absolute path"),
        ("a relative rewrite", "prefix = \"/api\"", "prefix = \"/api\"\nprefix_rewrite = \"v2\"", "routes[1].prefix_rewrite"),
        ("a rewrite on a gRPC service", "prefix = \"/api\"", "grpc_service = \"pkg.Svc\"\nprefix_rewrite = \"/\"", "routes[1].prefix_rewrite: only applies to a route with `prefix`"),
        ("no endpoints", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = []", "upstreams.app.endpoints: list 1 to 64 endpoints"),
        ("an endpoint with a path", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"10.0.0.1:3000\", \"10.0.0.2:3000/x\"]", "upstreams.app.endpoints[1]: \"10.0.0.2:3000/x\" is not host:port"),
        ("an endpoint with credentials", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"u:hunter2@10.0.0.1:3000\"]", "upstreams.app.endpoints[0]"),
        ("an endpoint twice", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"10.0.0.1:80\", \"10.0.0.1\"]", "upstreams.app.endpoints[1]: 10.0.0.1:80 is listed twice"),
        ("a short fail timeout", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoint_fail_timeout = \"1ms\"", "upstreams.app.endpoint_fail_timeout"),
        ("a set header bearward owns", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers = { \"X-Forwarded-For\" = \"1.2.3.4\" }", "upstreams.app.set_headers.X-Forwarded-For: \"X-Forwarded-For\" is a header bearward sets or removes itself"),
        ("a set hop-by-hop header", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers = { Connection = \"close\" }", "upstreams.app.set_headers.Connection"),
        ("a set request id", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers = { \"X-Request-Id\" = \"1\" }", "upstreams.app.set_headers.X-Request-Id"),
        ("a header set twice", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers = { \"X-Api-Key\" = \"a\" }\nset_headers_file = { \"x-api-key\" = \"tests/fixtures/legacy-api-key\" }", "upstreams.app.set_headers_file.x-api-key: \"x-api-key\" is set twice"),
        ("a response header that frames answers", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nremove_response_headers = [\"Content-Length\"]", "upstreams.app.remove_response_headers[0]: \"Content-Length\" is a header bearward writes on answers itself"),
        ("a response header bearward writes", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_response_headers = { RateLimit = \"x\" }", "upstreams.app.set_response_headers.RateLimit"),
        ("a response header set and removed", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nremove_response_headers = [\"server\"]\nset_response_headers = { Server = \"x\" }", "upstreams.app.set_response_headers.Server: \"Server\" is also removed"),
        ("a response header with a newline", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_response_headers = { \"X-A\" = \"a\\nb\" }", "upstreams.app.set_response_headers.X-A: is empty or holds a byte"),
        ("a gRPC health check of an HTTP/1 upstream", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nhealth_check = { grpc_service = \"\" }", "upstreams.app.health_check.grpc_service: gRPC health checks go over HTTP/2"),
        ("a health check asking nothing", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nprotocol = \"h2c\"\nhealth_check = { interval = \"1s\" }", "upstreams.app.health_check: give one of path"),
        ("a health check asking both", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nprotocol = \"h2c\"\nhealth_check = { path = \"/\", grpc_service = \"\" }", "upstreams.app.health_check: give one of path"),
        ("a gRPC health check of no service name", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nprotocol = \"h2c\"\nhealth_check = { grpc_service = \"a/b\" }", "upstreams.app.health_check.grpc_service: \"a/b\" is not a gRPC service name"),
        ("an endpoint weight of 0", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [{ address = \"127.0.0.1:3001\", weight = 0 }, \"127.0.0.1:3002\"]", "upstreams.app.endpoints[0].weight: 0 is not 1 to 100"),
        ("a weighted backup", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"127.0.0.1:3001\", { address = \"127.0.0.1:3002\", weight = 2, backup = true }]", "upstreams.app.endpoints[1].weight: a backup takes no weight"),
        ("no request per upstream connection", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nmax_requests_per_connection = 0", "upstreams.app.max_requests_per_connection: 0 is out of range (1 to 1000000000)"),
        ("a connection age of 0", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nmax_connection_age = \"0s\"", "upstreams.app.max_connection_age: \"0s\" is out of range (1s to 7days)"),
        ("least_request with one endpoint", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nbalance = \"least_request\"", "upstreams.app.balance: \"least_request\" needs endpoints: two or more"),
        ("an unknown balance", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\nbalance = \"least_conn\"", "upstreams.app.balance: \"least_conn\" is none of \"round_robin\", \"least_request\""),
        ("only backups", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [{ address = \"127.0.0.1:3001\", backup = true }]", "upstreams.app.endpoints: every endpoint is a backup"),
        ("a mistyped endpoint key", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [{ address = \"127.0.0.1:3001\", wieght = 2 }]", "unknown field `wieght`, expected one of `address`, `weight`, `backup`"),
        ("an endpoint that is a number", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [3001]", "expected \"host:port\" or { address = \"host:port\", weight = N, backup = true }"),
        ("retry statuses with one instance", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nretry_statuses = [503]", "upstreams.app.retry_statuses: needs endpoints"),
        ("a client error in retry statuses", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\nretry_statuses = [503, 404]", "upstreams.app.retry_statuses[1]: 404 is not 429 or 500 to 599"),
        ("a retry status twice", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\nretry_statuses = [503, 503]", "upstreams.app.retry_statuses[1]: 503 is listed twice"),
        ("retry statuses of a gRPC upstream", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nendpoints = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\nprotocol = \"h2c\"\nretry_statuses = [503]", "upstreams.app.retry_statuses: applies to HTTP/1 upstreams only"),
        ("a health check path with a space", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nhealth_check = { path = \"/health z\" }", "upstreams.app.health_check.path: \"/health z\" is not an origin-form path"),
        ("a health check slower than its interval", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nhealth_check = { path = \"/healthz\", interval = \"1s\", timeout = \"2s\" }", "upstreams.app.health_check.timeout: is longer than the interval"),
        ("a health check threshold of 0", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nhealth_check = { path = \"/healthz\", healthy_threshold = 0 }", "upstreams.app.health_check.healthy_threshold: 0 is out of range"),
        ("a health check key misspelt", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nhealth_check = { path = \"/healthz\", intervall = \"1s\" }", "intervall"),
        ("a queue without a limit", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nqueue_timeout = \"2s\"", "upstreams.app.queue_timeout: only applies with max_requests"),
        ("no requests at all", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nmax_requests = 0", "upstreams.app.max_requests: 0 is out of range"),
        ("a queue past a minute", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nmax_requests = 10\nqueue_timeout = \"2m\"", "upstreams.app.queue_timeout"),
        ("a set header file missing", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers_file = { \"X-Api-Key\" = \"tests/fixtures/nope\" }", "upstreams.app.set_headers_file.X-Api-Key: cannot read"),
        ("a set header from an unset variable", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers_env = { \"X-Api-Key\" = \"BEARWARD_TEST_NEVER_SET\" }", "upstreams.app.set_headers_env.X-Api-Key: environment variable"),
        ("a set header with a newline", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers = { \"X-Env\" = \"a\\nb\" }", "upstreams.app.set_headers.X-Env: is empty or holds a byte"),
        ("a set claim header", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nset_headers = { \"X-Sub\" = \"a\" }\n\n[forward]\nclaim_headers = { sub = \"X-Sub\" }", "upstreams.app.set_headers.X-Sub: \"X-Sub\" is filled from the token"),
        ("two resources on one host and path", "[[routes]]\nprefix = \"/api\"", "[[routes]]\nprefix = \"/b\"\nupstream = \"app\"\nauth = \"none\"\nresource = \"https://API.test/x\"\n\n[[routes]]\nprefix = \"/api\"\nresource = \"https://api.test:8443/x\"", "routes[2].resource: its metadata would be served at \"/.well-known/oauth-protected-resource/x\" for the same host"),
        ("an SNI certificate with another's key", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\ntls_cert_file = \"tests/fixtures/tls/server.pem\"\ntls_key_file = \"tests/fixtures/tls/server-key.pem\"\ntls_certificates = [{ cert_file = \"tests/fixtures/tls/sni-a.pem\", key_file = \"tests/fixtures/tls/sni-a-key.pem\" }, { cert_file = \"tests/fixtures/tls/sni-wild.pem\", key_file = \"tests/fixtures/tls/sni-a-key.pem\" }]", "server.tls_certificates[1]: the certificate and key do not go together"),
        ("SNI certificates without TLS", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\ntls_certificates = [{ cert_file = \"tests/fixtures/tls/sni-a.pem\", key_file = \"tests/fixtures/tls/sni-a-key.pem\" }]", "server.tls_certificates: applies only with TLS on the listener"),
        ("an SNI certificate entry with a typo", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\ntls_cert_file = \"tests/fixtures/tls/server.pem\"\ntls_key_file = \"tests/fixtures/tls/server-key.pem\"\ntls_certificates = [{ cert = \"tests/fixtures/tls/sni-a.pem\", key_file = \"tests/fixtures/tls/sni-a-key.pem\" }]", "unknown field `cert`"),
        ("non-canonical prefix", "prefix = \"/public\"", "prefix = \"/public/../x\"", "routes[0].prefix"),
        ("encoded prefix", "prefix = \"/api\"", "prefix = \"/%61pi\"", "routes[1].prefix"),
        ("prefix and path", "prefix = \"/api\"", "prefix = \"/api\"\npath = \"/api/x\"", "routes[1].path"),
        ("no matcher", "prefix = \"/api\"\n", "", "routes[1]"),
        ("prefix and gRPC service", "prefix = \"/api\"", "prefix = \"/api\"\ngrpc_service = \"pkg.Svc\"", "routes[1].grpc_service"),
        ("gRPC service with a slash", "prefix = \"/api\"", "grpc_service = \"pkg/Svc\"", "routes[1].grpc_service"),
        ("case folded on a gRPC service", "prefix = \"/api\"", "grpc_service = \"pkg.Svc\"\ncase_sensitive = false", "routes[1].case_sensitive: gRPC service and method names are case-sensitive"),
        ("h2c over https", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\nprotocol = \"h2c\"", "upstreams.app.protocol"),
        ("h2 over http", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nprotocol = \"h2\"", "upstreams.app.protocol"),
        ("unknown protocol", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nprotocol = \"http3\"", "upstreams.app.protocol"),
        ("bad listen", "listen = \"127.0.0.1:0\"", "listen = \"localhost\"", "server.listen"),
        ("ftp upstream", "url = \"http://127.0.0.1:3000\"", "url = \"ftp://127.0.0.1:3000\"", "upstreams.app.url"),
        ("TLS key on an http upstream", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntls_ca_file = \"tests/fixtures/tls/ca.pem\"", "upstreams.app.tls_ca_file"),
        ("missing CA file", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_ca_file = \"tests/fixtures/tls/nope.pem\"", "upstreams.app.tls_ca_file"),
        ("CA file without certificates", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_ca_file = \"tests/fixtures/tls/gen.sh\"", "upstreams.app.tls_ca_file"),
        ("client certificate without its key", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_client_cert = \"tests/fixtures/tls/client.pem\"", "upstreams.app.tls_client_key"),
        ("client key that is no key", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_client_cert = \"tests/fixtures/tls/client.pem\"\ntls_client_key = \"tests/fixtures/tls/client.pem\"", "upstreams.app.tls_client_key"),
        ("client key of another certificate", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_client_cert = \"tests/fixtures/tls/client.pem\"\ntls_client_key = \"tests/fixtures/tls/server-key.pem\"", "upstreams.app.tls_client_key"),
        ("bad TLS server name", "url = \"http://127.0.0.1:3000\"", "url = \"https://127.0.0.1:3000\"\ntls_server_name = \"not a name\"", "upstreams.app.tls_server_name"),
        ("upstream with a path", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000/base\"", "upstreams.app.url"),
        ("bad auth mode", "auth = \"none\"", "auth = \"open\"", "auth"),
        ("alg none", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nalgorithms = [\"none\"]", "issuers[0].algorithms[0]"),
        ("HS256 without a secret", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nalgorithms = [\"HS256\"]", "issuers[0].algorithms[0]"),
        ("no audiences", "audiences = [\"https://api.test\"]", "", "issuers[0].audiences"),
        ("two key sources", "jwks_file = \"tests/fixtures/empty-jwks.json\"", "jwks_file = \"x.json\"\njwks_uri = \"https://idp.test/jwks\"", "issuers[0]"),
        ("lower-case method", "scopes = [\"read\"]", "scopes = [\"read\"]\nmethods = [\"get\"]", "routes[1].methods[0]"),
        ("scopes on an open route", "auth = \"none\"", "auth = \"none\"\nscopes = [\"x\"]", "routes[0].scopes"),
        ("invalid scope token", "scopes = [\"read\"]", "scopes = [\"re ad\"]", "routes[1].scopes[0]"),
        ("missing jwks file", "jwks_file = \"tests/fixtures/empty-jwks.json\"", "jwks_file = \"tests/fixtures/nope.json\"", "issuers[0].jwks_file"),
        ("audit typo", "auth = \"none\"", "auth = \"none\"\nmode = \"audti\"", "mode"),
        ("preflight pass on an open route", "auth = \"none\"", "auth = \"none\"\ncors_preflight = true", "routes[0].cors_preflight"),
        ("preflight pass without OPTIONS", "scopes = [\"read\"]", "scopes = [\"read\"]\nmethods = [\"GET\"]\ncors_preflight = true", "routes[1].cors_preflight"),
        ("wrong type", "listen = \"127.0.0.1:0\"", "listen = 8080", "listen"),
        ("no worker threads", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nworker_threads = 0", "server.worker_threads"),
        ("http resource", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nresource = \"http://api.test\"", "server.resource"),
        ("resource with a query", "scopes = [\"read\"]", "scopes = [\"read\"]\nresource = \"https://api.test/api?v=1\"", "routes[1].resource"),
        ("two resources, one metadata path", "auth = \"none\"\n\n[[routes]]\nprefix = \"/api\"\n", "auth = \"none\"\nresource = \"https://a.test\"\n\n[[routes]]\nprefix = \"/api\"\nresource = \"https://a.test:8443/\"\n", "routes[1].resource"),
        ("bearer route without issuers", "[[issuers]]\nissuer = \"https://idp.test\"\njwks_file = \"tests/fixtures/empty-jwks.json\"\naudiences = [\"https://api.test\"]\n", "", "routes[1].auth"),
        ("RSA floor under 2048", "audiences = [\"https://api.test\"]", "audiences = [\"https://api.test\"]\nmin_rsa_bits = 1024", "issuers[0].min_rsa_bits"),
        ("no connections", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmax_connections = 0", "server.max_connections"),
        ("no requests in flight", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmax_requests_in_flight = 0", "server.max_requests_in_flight"),
        ("no HTTP/2 streams", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nhttp2_max_concurrent_streams = 0", "server.http2_max_concurrent_streams"),
        ("telemetry over ftp", "[server]", "[telemetry]\notlp_endpoint = \"ftp://collector:4317\"\n[server]", "telemetry.otlp_endpoint"),
        ("telemetry protocol", "[server]", "[telemetry]\notlp_endpoint = \"http://collector:4317\"\notlp_protocol = \"udp\"\n[server]", "telemetry.otlp_protocol"),
        ("sample ratio over 1", "[server]", "[telemetry]\notlp_endpoint = \"http://collector:4317\"\ntrace_sample_ratio = 2.0\n[server]", "telemetry.trace_sample_ratio"),
        ("no span queue", "[server]", "[telemetry]\notlp_endpoint = \"http://collector:4317\"\nmax_queued_spans = 0\n[server]", "telemetry.max_queued_spans"),
        ("request id header owned elsewhere", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nrequest_id_header = \"x-forwarded-for\"", "server.request_id_header"),
        ("negative shutdown delay", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nshutdown_delay = \"-1s\"", "server.shutdown_delay"),
        ("encoded percent as a string", "auth = \"none\"", "auth = \"none\"\nallow_encoded_percent = \"yes\"", "allow_encoded_percent"),
        ("rate limit per day", "scopes = [\"read\"]", "scopes = [\"read\"]\nrate_limit = { key = \"subject\", rate = \"10/d\" }", "routes[1].rate_limit.rate"),
        ("subject key without a token", "auth = \"none\"", "auth = \"none\"\nrate_limit = { key = \"subject\", rate = \"10/s\" }", "routes[0].rate_limit.key"),
        ("IPv6 prefix on a subject key", "scopes = [\"read\"]", "scopes = [\"read\"]\nrate_limit = { key = \"subject\", rate = \"10/s\", ipv6_prefix = 64 }", "routes[1].rate_limit.ipv6_prefix"),
        ("IPv6 prefix 0", "auth = \"none\"", "auth = \"none\"\nrate_limit = { key = \"ip\", rate = \"10/s\", ipv6_prefix = 0 }", "routes[0].rate_limit.ipv6_prefix"),
        ("assertion signed with a secret", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/p256.pem\", issuer = \"bw\", algorithm = \"HS256\" }", "upstreams.app.identity_assertion.algorithm"),
        ("assertion key of another type", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/rsa1.pem\", issuer = \"bw\" }", "cannot sign ES256"),
        ("assertion without an issuer", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/p256.pem\" }", "upstreams.app.identity_assertion.issuer: needs an issuer"),
        ("assertion overriding its own claims", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/p256.pem\", issuer = \"bw\", claims = [\"sub\", \"exp\"] }", "upstreams.app.identity_assertion.claims"),
        ("assertion in Authorization", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/p256.pem\", issuer = \"bw\", header = \"authorization\" }", "upstreams.app.identity_assertion.header"),
        ("assertion lifetime over an hour", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/p256.pem\", issuer = \"bw\", lifetime = \"2h\" }", "upstreams.app.identity_assertion.lifetime"),
        ("assertion request binding typo", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/p256.pem\", issuer = \"bw\", request = \"full\" }", "upstreams.app.identity_assertion.request"),
        ("assertion key file missing", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\nidentity_assertion = { signing_key_file = \"tests/fixtures/keys/nope.pem\", issuer = \"bw\" }", "upstreams.app.identity_assertion.signing_key_file: cannot read"),
        ("exchange without a secret", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\" }", "upstreams.app.token_exchange.client_secret_file: the client needs a secret: client_secret_file or client_secret_env"),
        ("exchange for a token bearward cannot send", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_secret_file = \"tests/fixtures/introspection-secret.txt\", requested_token_type = \"urn:ietf:params:oauth:token-type:refresh_token\" }", "upstreams.app.token_exchange.requested_token_type"),
        ("exchange at a relative endpoint", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_secret_file = \"tests/fixtures/introspection-secret.txt\", token_endpoint = \"/token\" }", "upstreams.app.token_exchange.token_endpoint"),
        ("exchange for a resource with a fragment", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_secret_file = \"tests/fixtures/introspection-secret.txt\", resource = \"https://api.test/#x\" }", "upstreams.app.token_exchange.resource"),
        ("exchange with a key and a secret", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_secret_file = \"tests/fixtures/introspection-secret.txt\", client_auth = \"private_key_jwt\", client_key_file = \"tests/fixtures/keys/rsa1.pem\" }", "private_key_jwt signs with client_key_file"),
        ("exchange timeout of a minute and more", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_secret_file = \"tests/fixtures/introspection-secret.txt\", timeout = \"2m\" }", "upstreams.app.token_exchange.timeout"),
        ("exchange by certificate without one", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_auth = \"tls_client_auth\" }", "upstreams.app.token_exchange.client_auth: tls_client_auth (RFC 8705) needs a client certificate"),
        ("exchange by certificate and a secret", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_auth = \"tls_client_auth\", client_secret_file = \"tests/fixtures/introspection-secret.txt\", tls_client_cert = \"tests/fixtures/tls/client.pem\", tls_client_key = \"tests/fixtures/tls/client-key.pem\" }", "a secret or key would never be used"),
        ("exchange certificate without its key", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", client_id = \"bw\", client_auth = \"tls_client_auth\", tls_client_cert = \"tests/fixtures/tls/client.pem\" }", "upstreams.app.token_exchange.tls_client_cert: give both tls_client_cert and tls_client_key"),
        ("exchange by discovery at an unknown issuer", "url = \"http://127.0.0.1:3000\"", "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://other-idp.test\", client_id = \"bw\", client_secret_file = \"tests/fixtures/introspection-secret.txt\" }", "is none of [[issuers]]: discovery needs one"),
        ("a claim logged twice", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\naccess_log_claims = [\"sub\", \"sub\"]", "server.access_log_claims[1]: \"sub\" is named twice"),
        ("a logged claim path with an empty segment", "listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\naccess_log_claims = [\"org..name\"]", "server.access_log_claims[0]: a claim path has no empty segments"),
        ("IPv6 prefix 129", "auth = \"none\"", "auth = \"none\"\nrate_limit = { key = \"ip\", rate = \"10/s\", ipv6_prefix = 129 }", "routes[0].rate_limit.ipv6_prefix"),
    ];
    for (what, from, to, needle) in cases {
        assert!(
            GOOD.contains(from),
            "{what}: fixture text {from:?} not found"
        );
        let broken = GOOD.replacen(from, to, 1);
        let out = match Config::from_toml_str(&broken, "case.toml") {
            Ok(_) => panic!("{what}: accepted\n{broken}"),
            Err(e) => e.to_string(),
        };
        assert!(
            out.contains(needle),
            "{what}: message does not name {needle:?}:\n{out}"
        );
        assert!(
            out.contains(".toml:"),
            "{what}: message does not name the file and line:\n{out}"
        );
        assert!(
            !out.contains("hunter2"),
            "{what}: a password echoed:\n{out}"
        );
    }
}

/// A reload compares the settings read once at start as one struct: each that differs is
/// named (and warned about), and one added to it later is compared without a list to update.
#[test]
fn restart_only_settings_are_compared_as_one() {
    let a = Config::from_toml_str(GOOD, "a.toml").unwrap();
    let changed = GOOD.replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nlisten_backlog = 100\nhttp2 = false\nmax_requests_in_flight = 7",
        1,
    );
    let b = Config::from_toml_str(&changed, "b.toml").unwrap();
    assert_eq!(
        a.server.listening.changed(&b.server.listening),
        [
            "server.http2",
            "server.listen_backlog",
            "server.max_requests_in_flight"
        ]
    );
    assert!(a.server.listening.changed(&a.server.listening).is_empty());
}

/// `revoked.issued_before` in the future refuses the tokens an issuer gives after the incident
/// too: `check` warns of it; a cut-off in the past is what it is for, and says nothing.
#[test]
fn a_revocation_cut_off_in_the_future_is_warned_of() {
    let warned = |at: &str| {
        let text = GOOD.replacen(
            "audiences = [\"https://api.test\"]",
            &format!(
                "audiences = [\"https://api.test\"]\nrevoked = {{ issued_before = \"{at}\" }}"
            ),
            1,
        );
        let c = Config::from_toml_str(&text, "r.toml").unwrap();
        c.warnings
            .iter()
            .map(ToString::to_string)
            .find(|w| w.contains("revoked.issued_before"))
    };
    let w = warned("2099-01-01T00:00:00Z").expect("warned");
    assert!(w.contains("issuers[0].revoked.issued_before: is "), "{w}");
    assert!(w.contains("in the future"), "{w}");
    assert_eq!(warned("2020-01-01T00:00:00Z"), None);
}

/// A store that would hold security decisions without `[cache] secret` to seal them: `check`
/// says they stay per process, and names which; with the secret, or with nothing of the kind
/// to keep, it says nothing.
#[test]
fn a_store_without_a_secret_is_warned_of_where_it_would_hold_decisions() {
    let store = "[cache]\nredis_url = \"redis://127.0.0.1:6379\"\n";
    let exchange = "url = \"http://127.0.0.1:3000\"\ntoken_exchange = { issuer = \"https://idp.test\", token_endpoint = \"https://idp.test/token\", client_id = \"bw\", client_secret_file = \"tests/fixtures/exchange-secret\", audience = \"https://orders.test\" }";
    let warned = |text: &str| {
        let c = Config::from_toml_str(text, "w.toml").unwrap();
        c.warnings
            .iter()
            .map(ToString::to_string)
            .find(|w| w.contains("cache.secret_file"))
    };
    let with_exchange = GOOD.replacen("url = \"http://127.0.0.1:3000\"", exchange, 1);
    let w = warned(&format!("{store}{with_exchange}")).expect("warned");
    assert!(w.contains("exchanged tokens stay in each process"), "{w}");
    assert!(w.contains("w.toml:"), "{w}");
    let sealed = format!("{store}secret_file = \"tests/fixtures/store-secret\"\n{with_exchange}");
    assert_eq!(warned(&sealed), None);
    assert_eq!(warned(&format!("{store}{GOOD}")), None, "nothing to keep");
}

/// A route for some hosts above a weaker route for every host, on the same upstream: `check`
/// says an upstream that serves every host alike serves the checked paths under the weaker
/// check; with the weaker route on another upstream, or given hosts of its own, it says nothing.
#[test]
fn a_weaker_route_taking_a_host_routes_paths_for_other_hosts_is_warned_of() {
    let routes = |catch_all: &str| {
        GOOD.replacen(
            "[[routes]]\nprefix = \"/public\"",
            &format!(
                "[[routes]]\nprefix = \"/admin\"\nhosts = [\"admin.test\"]\nscopes = [\"admin\"]\nupstream = \"app\"\n\n\
                 [[routes]]\nprefix = \"/\"\nauth = \"none\"\n{catch_all}\n\n[[routes]]\nprefix = \"/public\""
            ),
            1,
        )
    };
    let warned = |text: &str| {
        let c = Config::from_toml_str(text, "h.toml").unwrap();
        c.warnings
            .iter()
            .map(ToString::to_string)
            .find(|w| w.contains("for hosts other than"))
    };
    let w = warned(&routes("upstream = \"app\"")).expect("warned");
    assert!(w.contains("routes[1]"), "{w}");
    assert!(
        w.contains("/admin for hosts other than admin.test (routes[0] admin.test/admin*)"),
        "{w}"
    );
    assert!(w.contains("give this route hosts of its own"), "{w}");
    let elsewhere =
        routes("upstream = \"other\"") + "\n[upstreams.other]\nurl = \"http://127.0.0.1:3001\"\n";
    assert_eq!(warned(&elsewhere), None, "another upstream is another site");
    assert_eq!(
        warned(&routes("upstream = \"app\"\nhosts = [\"www.test\"]")),
        None
    );
}
