//! Importer unit tests: each unsupported field and each destination problem
//! gives its named error; the native-only path is unchanged.

use crate::config::error::ConfigErrors;
use crate::config::load::load_texts;
use crate::config::model::Config;

use super::parse_texts;

fn load(files: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    load_texts(&files)
}

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    match load(files) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// The one error a single manifest file gives.
fn error_of(text: &str) -> String {
    let errs = errors(&[("mesh.yaml", text)]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    errs.into_iter().next().unwrap_or_default()
}

const VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.example.com]
  http:
  - route: [{destination: {host: reviews}}]
";

/// A VirtualService whose first HTTP rule also has `extra` (one line).
fn vs_with(extra: &str) -> String {
    format!("{VS}    {extra}\n")
}

/// A VirtualService whose first HTTP rule matches on `cond` (flow YAML).
fn vs_match(cond: &str) -> String {
    vs_with(&format!("match: [{{{cond}}}]"))
}

const HTTPROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: store}
spec:
  rules:
  - backendRefs: [{name: store-v1, port: 8080}]
";

fn route_with(extra: &str) -> String {
    format!("{HTTPROUTE}    {extra}\n")
}

macro_rules! unsupported {
    ($($name:ident: $text:expr => $path:expr;)*) => {$(
        #[test]
        fn $name() {
            assert_eq!(
                error_of(&$text),
                format!("mesh.yaml: document 1 {}: not supported by shadowgate", $path)
            );
        }
    )*};
}

unsupported! {
    vs_tcp: format!("{VS}  tcp: [{{route: [{{destination: {{host: db}}}}]}}]\n")
        => "(VirtualService reviews) spec.tcp";
    vs_tls: format!("{VS}  tls: [{{match: [{{sniHosts: [a.example.com]}}]}}]\n")
        => "(VirtualService reviews) spec.tls";
    vs_fault: vs_with("fault: {abort: {httpStatus: 500, percentage: {value: 10}}}")
        => "(VirtualService reviews) spec.http[0].fault";
    vs_headers_append: vs_with("headers: {request: {append: {x-a: b}}}")
        => "(VirtualService reviews) spec.http[0].headers.request.append";
    vs_route_headers_other: VS.replace(
        "{destination: {host: reviews}}",
        "{destination: {host: reviews}, headers: {upstream: {set: {x-a: b}}}}",
    ) => "(VirtualService reviews) spec.http[0].route[0].headers.upstream";
    vs_rewrite_regex: vs_with("rewrite: {uriRegexRewrite: {match: a, rewrite: b}}")
        => "(VirtualService reviews) spec.http[0].rewrite.uriRegexRewrite";
    vs_cors_other_field: vs_with("corsPolicy: {allowOrigins: [{exact: a.example.com}], allowPrivateNetwork: true}")
        => "(VirtualService reviews) spec.http[0].corsPolicy.allowPrivateNetwork";
    vs_redirect: vs_with("redirect: {uri: /v1/bookRatings}")
        => "(VirtualService reviews) spec.http[0].redirect";
    vs_direct_response: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [a.example.com]\n  http:\n  - directResponse: {status: 503}\n"
        => "(VirtualService reviews) spec.http[0].directResponse";
    vs_delegate: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [a.example.com]\n  http:\n  - delegate: {name: reviews-v2, namespace: nsb}\n"
        => "(VirtualService reviews) spec.http[0].delegate";
    vs_rate_limit: vs_with("rateLimit: {local: {tokenBucket: {maxTokens: 10}}}")
        => "(VirtualService reviews) spec.http[0].rateLimit";
    vs_port_name: VS.replace("{host: reviews}", "{host: reviews, port: {name: http}}")
        => "(VirtualService reviews) spec.http[0].route[0].destination.port.name";
    vs_match_authority: vs_match("authority: {exact: a.example.com}")
        => "(VirtualService reviews) spec.http[0].match[0].authority";
    vs_match_without_headers: vs_match("withoutHeaders: {x-a: {exact: b}}")
        => "(VirtualService reviews) spec.http[0].match[0].withoutHeaders";
    vs_match_port: vs_match("port: 8080")
        => "(VirtualService reviews) spec.http[0].match[0].port";
    vs_match_scheme: vs_match("scheme: {exact: https}")
        => "(VirtualService reviews) spec.http[0].match[0].scheme";
    vs_match_source_labels: vs_match("sourceLabels: {app: web}")
        => "(VirtualService reviews) spec.http[0].match[0].sourceLabels";
    vs_match_gateways: vs_match("gateways: [mesh]")
        => "(VirtualService reviews) spec.http[0].match[0].gateways";
    vs_match_source_namespace: vs_match("sourceNamespace: web")
        => "(VirtualService reviews) spec.http[0].match[0].sourceNamespace";
    vs_match_stat_prefix: vs_match("statPrefix: reviews")
        => "(VirtualService reviews) spec.http[0].match[0].statPrefix";
    vs_match_method_prefix: vs_match("method: {prefix: G}")
        => "(VirtualService reviews) spec.http[0].match[0].method.prefix";
    vs_match_method_regex: vs_match("method: {regex: \"GET|HEAD\"}")
        => "(VirtualService reviews) spec.http[0].match[0].method.regex";
    dr_traffic_policy: "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n"
        => "(DestinationRule reviews) spec.trafficPolicy";
    dr_subset_traffic_policy: "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}\n"
        => "(DestinationRule reviews) spec.subsets[0].trafficPolicy";
    dr_workload_selector: "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  workloadSelector: {matchLabels: {app: web}}\n"
        => "(DestinationRule reviews) spec.workloadSelector";
    route_session_persistence: route_with("sessionPersistence: {sessionName: s}")
        => "(HTTPRoute store) spec.rules[0].sessionPersistence";
    grpc_timeouts: GRPCROUTE.replace("  - backendRefs", "  - timeouts: {request: 5s}\n    backendRefs")
        => "(GRPCRoute greeter) spec.rules[0].timeouts";
    grpc_session_persistence: GRPCROUTE.replace("  - backendRefs", "  - sessionPersistence: {sessionName: s}\n    backendRefs")
        => "(GRPCRoute greeter) spec.rules[0].sessionPersistence";
}

const GRPCROUTE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter}
spec:
  rules:
  - backendRefs: [{name: greeter, port: 50051}]
";

macro_rules! rejected {
    ($($name:ident: $text:expr => $path:expr, $reason:expr;)*) => {$(
        #[test]
        fn $name() {
            assert_eq!(
                error_of(&$text),
                format!("mesh.yaml: document 1 {}: {}", $path, $reason)
            );
        }
    )*};
}

rejected! {
    vs_cors_unmatched_preflights_ignore: vs_with("corsPolicy: {allowOrigins: [{exact: a.example.com}], unmatchedPreflights: IGNORE}")
        => "(VirtualService reviews) spec.http[0].corsPolicy.unmatchedPreflights",
        "`IGNORE` is not supported by shadowgate (preflights from other origins are forwarded)";
    vs_cors_without_origins: vs_with("corsPolicy: {allowMethods: [GET]}")
        => "(VirtualService reviews) spec.http[0].corsPolicy.allowOrigins",
        "needs at least one origin";
    vs_retry_on_unknown: vs_with("retries: {attempts: 3, retryOn: \"5xx,bogus\"}")
        => "(VirtualService reviews) spec.http[0].retries.retryOn",
        "retry condition `bogus` is not supported by shadowgate";
    vs_match_query_present: vs_match("queryParams: {v: {}}")
        => "(VirtualService reviews) spec.http[0].match[0].queryParams.v",
        "give one of exact, prefix and regex";
    route_query_prefix: route_with("matches: [{queryParams: [{type: Prefix, name: v, value: \"2\"}]}]")
        => "(HTTPRoute store) spec.rules[0].matches[0].queryParams[0].type",
        "query match type `Prefix` is not supported by shadowgate (use Exact or RegularExpression)";
    route_backend_mirror_filter: HTTPROUTE.replace(
        "port: 8080}",
        "port: 8080, filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}]}",
    ) => "(HTTPRoute store) spec.rules[0].backendRefs[0].filters[0].type",
        "filter type `RequestMirror` on a backendRef is not supported by shadowgate (use RequestHeaderModifier or ResponseHeaderModifier)";
    route_retry_code: route_with("retry: {attempts: 2, codes: [200]}")
        => "(HTTPRoute store) spec.rules[0].retry.codes[0]",
        "must be a status code between 400 and 599";
    route_two_request_modifiers: route_with("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: a, value: b}]}}, {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: c, value: d}]}}]")
        => "(HTTPRoute store) spec.rules[0].filters[1].type",
        "only one RequestHeaderModifier filter is allowed";
    route_filter_url_rewrite_on_grpc: GRPCROUTE.replace("  - backendRefs", "  - filters: [{type: URLRewrite, urlRewrite: {hostname: a.example.com}}]\n    backendRefs")
        => "(GRPCRoute greeter) spec.rules[0].filters[0].type",
        "filter type `URLRewrite` is not supported by shadowgate";
    route_backend_request_over_request: route_with("timeouts: {request: 1s, backendRequest: 2s}")
        => "(HTTPRoute store) spec.rules[0].timeouts.backendRequest",
        "2s is longer than timeouts.request (1s); it must not be";
    route_filter_redirect: route_with("filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]")
        => "(HTTPRoute store) spec.rules[0].filters[0].type",
        "filter type `RequestRedirect` is not supported by shadowgate";
    route_filter_extension_ref: route_with("filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: Opt, name: o}}]")
        => "(HTTPRoute store) spec.rules[0].filters[0].type",
        "filter type `ExtensionRef` is not supported by shadowgate";
    route_backend_kind: HTTPROUTE.replace("{name: store-v1, port: 8080}", "{name: store, kind: Upstream, group: gloo.solo.io}")
        => "(HTTPRoute store) spec.rules[0].backendRefs[0].kind",
        "backends of kind `Upstream` of group `gloo.solo.io` are not supported by shadowgate; use a Kubernetes Service";
    route_filter_cors: route_with("filters: [{type: CORS, cors: {allowOrigins: [\"*\"]}}]")
        => "(HTTPRoute store) spec.rules[0].filters[0].type",
        "filter type `CORS` is not supported by shadowgate";
    grpc_method_type: GRPCROUTE.replace("  - backendRefs", "  - matches: [{method: {type: Prefix, service: a.B}}]\n    backendRefs")
        => "(GRPCRoute greeter) spec.rules[0].matches[0].method.type",
        "method match type `Prefix` is not supported by shadowgate (use Exact or RegularExpression)";
    vs_mirror_and_mirrors: vs_with("mirror: {host: a}\n    mirrors: [{destination: {host: b}}]")
        => "(VirtualService reviews) spec.http[0]",
        "give either mirror or mirrors, not both";
    route_path_type: route_with("matches: [{path: {type: Glob, value: /a}}]")
        => "(HTTPRoute store) spec.rules[0].matches[0].path.type",
        "path match type `Glob` is not supported by shadowgate (use PathPrefix, Exact or RegularExpression)";
    route_no_backend: "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: store}\nspec:\n  rules:\n  - matches: [{path: {value: /a}}]\n"
        => "(HTTPRoute store) spec.rules[0].backendRefs",
        "needs at least one backend (rules that only answer with an error are not supported)";
    tcp_route: "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: db}\nspec: {}\n"
        => "(TCPRoute db) kind",
        "TCPRoute is not supported by shadowgate: shadowgate routes HTTP and gRPC only";
    vs_version: VS.replace("networking.istio.io/v1", "networking.istio.io/v2")
        => "(VirtualService reviews) apiVersion",
        "VirtualService version `networking.istio.io/v2` is not supported by shadowgate (use networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3)";
    vs_mirror_percentage_high: vs_with("mirror: {host: reviews-next}\n    mirrorPercentage: {value: 150}")
        => "(VirtualService reviews) spec.http[0].mirrorPercentage.value",
        "150 is not between 0 and 100";
    vs_mirror_percentage_negative: vs_with("mirror: {host: reviews-next}\n    mirrorPercentage: {value: -1.5}")
        => "(VirtualService reviews) spec.http[0].mirrorPercentage.value",
        "-1.5 is not between 0 and 100";
    vs_mirror_percentage_text: vs_with("mirror: {host: reviews-next}\n    mirrorPercentage: {value: half}")
        => "(VirtualService reviews) spec.http[0].mirrorPercentage.value",
        "must be a number, not a string";
    vs_mirror_percent_legacy_high: vs_with("mirror: {host: reviews-next}\n    mirror_percent: 101")
        => "(VirtualService reviews) spec.http[0].mirror_percent",
        "101 is not a whole number between 0 and 100";
    vs_mirrors_percentage_high: vs_with("mirrors: [{destination: {host: reviews-next}, percentage: {value: 100.5}}]")
        => "(VirtualService reviews) spec.http[0].mirrors[0].percentage.value",
        "100.5 is not between 0 and 100";
    vs_two_percentages: vs_with("mirror: {host: reviews-next}\n    mirrorPercentage: {value: 5}\n    mirror_percent: 5")
        => "(VirtualService reviews) spec.http[0]",
        "give only one of mirrorPercentage, mirror_percent";
    vs_percentage_without_mirror: vs_with("mirrorPercentage: {value: 5}")
        => "(VirtualService reviews) spec.http[0].mirrorPercentage",
        "has no effect without `mirror`";
    route_mirror_percent_high: route_with("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}, percent: 101}}]")
        => "(HTTPRoute store) spec.rules[0].filters[0].requestMirror.percent",
        "101 is not a whole number between 0 and 100";
    route_mirror_fraction_high: route_with("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}, fraction: {numerator: 3, denominator: 2}}}]")
        => "(HTTPRoute store) spec.rules[0].filters[0].requestMirror.fraction",
        "numerator 3 is larger than denominator 2";
    route_mirror_fraction_zero: route_with("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}, fraction: {numerator: 0, denominator: 0}}}]")
        => "(HTTPRoute store) spec.rules[0].filters[0].requestMirror.fraction.denominator",
        "must be at least 1";
    route_mirror_both: route_with("filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s, port: 80}, percent: 5, fraction: {numerator: 1}}}]")
        => "(HTTPRoute store) spec.rules[0].filters[0].requestMirror",
        "give either percent or fraction, not both";
    vs_zero_timeout: vs_with("timeout: 0s")
        => "(VirtualService reviews) spec.http[0].timeout",
        "0s (no timeout) is not supported by shadowgate; give a duration";
    vs_bad_timeout: vs_with("timeout: 10 seconds")
        => "(VirtualService reviews) spec.http[0].timeout",
        "`10 seconds` is not a duration like `10s`, `500ms` or `1m30s`";
    vs_bad_regex: vs_match("uri: {regex: \"/a(\"}")
        => "(VirtualService reviews) spec.http[0].match[0].uri.regex",
        "invalid regular expression: regex parse error:\n    ^(?:/a()$\n     ^\nerror: unclosed group";
    vs_bad_method: vs_match("method: {exact: \"G T\"}")
        => "(VirtualService reviews) spec.http[0].match[0].method.exact",
        "`G T` is not an HTTP method";
    vs_two_string_matches: vs_match("uri: {exact: /a, prefix: /b}")
        => "(VirtualService reviews) spec.http[0].match[0].uri",
        "give only one of exact, prefix and regex";
    vs_no_route: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [a.example.com]\n  http:\n  - timeout: 5s\n"
        => "(VirtualService reviews) spec.http[0].route",
        "needs at least one destination";
    vs_weights_zero: VS.replace(
        "[{destination: {host: reviews}}]",
        "[{destination: {host: reviews, subset: v1}}, {destination: {host: reviews, subset: v2}}]",
    ) => "(VirtualService reviews) spec.http[0].route",
        "the weights add up to 0";
    vs_no_name: VS.replace("metadata: {name: reviews}", "metadata: {namespace: x}")
        => "(VirtualService) metadata.name",
        "is required";
    vs_unknown_destination: VS.replace("{host: reviews}", "{host: api.example.com}")
        => "(VirtualService reviews) spec.http[0].route[0].destination.host",
        "unknown destination `api.example.com`: not a Kubernetes service name (`name`, `name.namespace` or `name.namespace.svc.cluster.local`) and not in the `services:` map";
    vs_undefined_subset: VS.replace("{host: reviews}", "{host: reviews, subset: v9}")
        => "(VirtualService reviews) spec.http[0].route[0].destination.subset",
        "no DestinationRule for `reviews.default.svc.cluster.local` defines subset `v9`";
    vs_no_hosts: VS.replace("hosts: [reviews.example.com]", "hosts: []")
        => "(VirtualService reviews) spec.hosts",
        "needs at least one host";
    route_zero_weights: HTTPROUTE.replace("port: 8080}", "port: 8080, weight: 0}")
        => "(HTTPRoute store) spec.rules[0].backendRefs",
        "the weights add up to 0";
    route_bad_hostname: format!("{HTTPROUTE}  hostnames: [\"a b\"]\n")
        => "(HTTPRoute store) spec.hostnames[0]",
        "`a b` is not a hostname like `example.com` or `*.example.com`";
}

const REVIEWS_DR: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2, track: stable}}
---
";

#[test]
fn subset_without_services_entry() {
    let text = format!(
        "{REVIEWS_DR}{}",
        VS.replace("{host: reviews}", "{host: reviews, subset: v2}")
    );
    assert_eq!(
        error_of(&text),
        "mesh.yaml: document 2 (VirtualService reviews) spec.http[0].route[0].destination.subset: \
         subset `v2` of `reviews.default.svc.cluster.local` selects pods by labels \
         (version=v2, track=stable), which shadowgate cannot do through DNS; give its \
         endpoints in the `services:` map: `services: {reviews: {v2: [\"host:port\"]}}`"
    );
}

#[test]
fn subset_missing_from_services_entry() {
    let text = format!(
        "{REVIEWS_DR}{}",
        VS.replace("{host: reviews}", "{host: reviews, subset: v2}")
    );
    let services = "services:\n  reviews: {v1: [\"127.0.0.1:1\"]}\n";
    let errs = errors(&[("services.yaml", services), ("mesh.yaml", &text)]);
    assert_eq!(
        errs,
        vec![
            "mesh.yaml: document 2 (VirtualService reviews) spec.http[0].route[0].destination.subset: \
             `services: reviews` in services.yaml has no subset `v2` (it has: v1)"
        ]
    );
}

#[test]
fn subset_of_plain_services_entry() {
    let text = format!(
        "{REVIEWS_DR}{}",
        VS.replace("{host: reviews}", "{host: reviews, subset: v2}")
    );
    let services = "services:\n  reviews.default: [\"127.0.0.1:1\"]\n";
    let errs = errors(&[("services.yaml", services), ("mesh.yaml", &text)]);
    assert_eq!(
        errs,
        vec![
            "mesh.yaml: document 2 (VirtualService reviews) spec.http[0].route[0].destination.subset: \
             `services: reviews.default` in services.yaml lists endpoints without subsets; give \
             subset `v2` its own list: `reviews.default: {v2: [\"host:port\"]}`"
        ]
    );
}

#[test]
fn ambiguous_service_port() {
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews}}\nspec:\n  ports: [{{port: 80}}, {{port: 9080}}]\n---\n{VS}"
    );
    assert_eq!(
        error_of(&text),
        "mesh.yaml: document 2 (VirtualService reviews) spec.http[0].route[0].destination: \
         service `reviews.default` has several ports (80, 9080); name one with the destination's port"
    );
}

#[test]
fn bad_services_endpoint() {
    let services = "services:\n  reviews: {v1: [\"127.0.0.1\"]}\n";
    let errs = errors(&[("services.yaml", services), ("mesh.yaml", VS)]);
    assert_eq!(
        errs,
        vec![
            "services.yaml: services.reviews.v1[0]: `127.0.0.1` has no port; write it as host:port"
        ]
    );
}

#[test]
fn services_given_twice() {
    let services = "services:\n  reviews: [\"127.0.0.1:1\"]\n";
    let errs = errors(&[
        ("a.yaml", services),
        ("b.yaml", services),
        ("mesh.yaml", VS),
    ]);
    assert_eq!(
        errs,
        vec!["b.yaml: services.reviews: `reviews` is also given in a.yaml"]
    );
}

#[test]
fn duplicate_object() {
    let errs = errors(&[("a.yaml", VS), ("b.yaml", VS)]);
    assert_eq!(
        errs,
        vec![
            "b.yaml: document 1 (VirtualService reviews) metadata.name: \
             VirtualService default/reviews is also defined in a.yaml document 1"
        ]
    );
}

#[test]
fn errors_name_the_document() {
    let text = format!(
        "{}{}",
        REVIEWS_DR,
        vs_with("fault: {delay: {fixedDelay: 5s}}")
    );
    assert_eq!(
        error_of(&text),
        "mesh.yaml: document 2 (VirtualService reviews) spec.http[0].fault: not supported by shadowgate"
    );
}

#[test]
fn list_items_are_objects() {
    let mut items = String::new();
    for line in vs_with("fault: {delay: {fixedDelay: 5s}}").lines() {
        items.push_str("  ");
        items.push_str(line);
        items.push('\n');
    }
    let items = items.replacen("  apiVersion", "- apiVersion", 1);
    let text = format!("apiVersion: v1\nkind: List\nitems:\n{items}");
    assert_eq!(
        error_of(&text),
        "mesh.yaml: document 1 items[0] (VirtualService reviews) spec.http[0].fault: not supported by shadowgate"
    );
}

#[test]
fn native_document_errors_in_manifest_file() {
    let text = format!("{VS}---\nroutes: 5\n");
    assert_eq!(
        error_of(&text),
        "mesh.yaml (document 2): routes: invalid type: integer `5`, expected a sequence"
    );
}

#[test]
fn object_needs_api_version_and_kind() {
    let text = format!("{VS}---\nkind: VirtualService\nmetadata: {{name: x}}\n");
    assert_eq!(
        error_of(&text),
        "mesh.yaml: document 2: a Kubernetes object needs both apiVersion and kind"
    );
}

#[test]
fn unrelated_kinds_are_skipped() {
    let text = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec: {{template: {{spec: {{fault: 1}}}}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: web}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g}}\nspec: {{}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec: {{servers: []}}\n---\n\
         {VS}"
    );
    let config = load(&[("mesh.yaml", &text)]).expect("valid");
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].name, "reviews-0-0");
    assert_eq!(config.routes[0].backend, "reviews.default-80");
    let b = &config.backends["reviews.default-80"];
    assert_eq!(
        b.endpoints[0].authority,
        "reviews.default.svc.cluster.local:80"
    );
}

#[test]
fn native_only_paths_are_unchanged() {
    let native = "\
backends:
  v1: {endpoints: [\"127.0.0.1:1\"]}
routes:
- name: r
  backend: v1
  mirrors:
  - {backend: v1}
  - {backend: v1, percent: 120}
";
    assert_eq!(
        errors(&[("native.yaml", native)]),
        vec!["native.yaml: routes[0].mirrors[1].percent: 120 is not between 0 and 100"]
    );
    // Shape errors keep their serde paths too.
    assert_eq!(
        errors(&[(
            "native.yaml",
            "routes: [{name: r, backend: v1, bogus: 1}]\n"
        )]),
        vec![
            "native.yaml: routes[0].bogus: unknown field `bogus`, expected one of \
             `name`, `match`, `backend`, `split`, `mirrors`, `compare`, `secondary`, `noise`, `promotion`, `max_body_bytes`, `headers`, `retries`, `rewrite`, `cors`, `record` at line 1 column 33"
        ]
    );
    // A native file next to manifests keeps its own name and paths.
    let errs = errors(&[("native.yaml", native), ("mesh.yaml", VS)]);
    assert_eq!(
        errs,
        vec!["native.yaml: routes[0].mirrors[1].percent: 120 is not between 0 and 100"]
    );
}

#[test]
fn converted_routes_and_native_routes_merge() {
    let native = "\
listen: 127.0.0.1:0
services:
  reviews: [\"127.0.0.1:9\"]
backends:
  legacy: {endpoints: [\"127.0.0.1:8\"]}
routes:
- {name: legacy, match: {path_prefix: /legacy}, backend: legacy}
";
    let files = [
        ("native.yaml".to_string(), native.to_string()),
        ("mesh.yaml".to_string(), VS.to_string()),
    ];
    let parsed = parse_texts(&files).expect("parses");
    let names: Vec<&str> = parsed.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, vec!["native.yaml", "mesh.yaml (converted)"]);
    let config = load(&[("native.yaml", native), ("mesh.yaml", VS)]).expect("valid");
    let routes: Vec<(&str, &str)> = config
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.backend.as_str()))
        .collect();
    assert_eq!(
        routes,
        vec![("legacy", "legacy"), ("reviews-0-0", "reviews.default-80")]
    );
    assert_eq!(
        config.backends["reviews.default-80"].endpoints[0].authority,
        "127.0.0.1:9"
    );
}

#[test]
fn route_names_stay_unique() {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reviews}\nspec:\n  rules:\n  - backendRefs: [{name: reviews, port: 80}]\n";
    let config = load(&[("mesh.yaml", &format!("{VS}---\n{route}"))]).expect("valid");
    let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["reviews-0-0", "reviews-0-0-2"]);
}

#[test]
fn unreadable_and_bad_files_are_reported_together_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen: [1, 2\n").expect("write");
    let missing = dir.path().join("missing.yaml");
    let err = crate::config::load_files(&[missing.clone(), bad.clone()]).expect_err("errors");
    assert_eq!(err.0.len(), 2, "{err}");
    assert_eq!(err.0[0].file, missing.display().to_string());
    assert!(err.0[0].reason.starts_with("cannot read: "));
    assert_eq!(err.0[1].file, bad.display().to_string());
}

#[test]
fn grpc_method_matches() {
    let text = GRPCROUTE.replace(
        "  - backendRefs",
        "  - matches:\n    - method: {method: Ping}\n    - method: {type: RegularExpression, service: \"a\\\\.B.*\"}\n    backendRefs",
    );
    let files = [("mesh.yaml".to_string(), text)];
    let parsed = parse_texts(&files).expect("valid");
    let routes: Vec<String> = parsed[0]
        .1
        .routes
        .iter()
        .map(|r| {
            let m = r.match_.clone().unwrap_or_default();
            format!("{} {:?} {:?}", r.name, m.path_regex, m.path_exact)
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            "greeter-0-1 Some(\"/(?:a\\\\.B.*)/(?:[^/]+)\") None",
            "greeter-0-0 Some(\"/[^/]+/Ping\") None",
        ]
    );
}
