//! Property tests: normalization and matching hold for generated paths, not
//! only for the table-driven cases beside the code.

use bouncer_core::{
    path::normalize_path,
    routes::{RouteMatch, RouteTable},
};
use proptest::prelude::*;

/// Path-ish strings: mostly the characters that matter to normalization
/// (`/`, `.`, `%`, hex digits, delimiters), plus anything at all.
fn pathish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => Just("/".to_owned()),
        3 => Just(".".to_owned()),
        2 => Just("..".to_owned()),
        2 => "[a-zA-Z0-9_~-]{1,4}",
        2 => "%[0-9a-fA-F]{2}",
        1 => Just("%".to_owned()),
        1 => "[;#?\\\\ \u{0}-\u{1f}\u{7f}]",
        1 => "\\PC{1,2}",
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|parts| format!("/{}", parts.concat()))
}

/// Segments made of characters that need no escaping.
fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,6}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalized_paths_are_canonical(input in pathish()) {
        if let Ok(normal) = normalize_path(&input) {
            let normal = normal.into_owned();
            prop_assert_eq!(normalize_path(&normal).map(|c| c.into_owned()), Ok(normal.clone()), "idempotent");
            prop_assert!(normal.starts_with('/'));
            prop_assert!(!normal.contains("//"), "{} merged slashes", normal);
            for segment in normal.split('/').skip(1) {
                prop_assert!(segment != "." && segment != "..", "{} still has dot segments", normal);
            }
            prop_assert!(!normal.contains(['\\', ';', '#', '?']), "{} kept a delimiter", normal);
            prop_assert!(normal.bytes().all(|b| b.is_ascii_graphic()), "{} is visible ASCII", normal);
            // No escape of an unreserved character survives, and escapes are upper case.
            let bytes = normal.as_bytes();
            for (i, _) in normal.match_indices('%') {
                let hex = &normal[i + 1..i + 3];
                prop_assert_eq!(hex.to_ascii_uppercase(), hex, "escapes are upper case in {}", normal);
                let byte = u8::from_str_radix(hex, 16).unwrap();
                prop_assert!(!(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)), "{} kept %{}", normal, hex);
                prop_assert!(i + 2 < bytes.len());
            }
        }
    }

    #[test]
    fn an_encoded_slash_or_a_climb_above_the_root_never_passes(
        prefix in proptest::collection::vec(segment(), 0..4),
        up in 1usize..6,
    ) {
        let base = format!("/{}", prefix.join("/"));
        let (slash, backslash) = (format!("{base}/a%2Fb"), format!("{base}/a%5cb"));
        prop_assert!(normalize_path(&slash).is_err(), "{} passed", slash);
        prop_assert!(normalize_path(&backslash).is_err(), "{} passed", backslash);
        let climb = format!("{base}{}", "/..".repeat(up));
        // Climbing exactly to the root is fine; beyond it is refused.
        prop_assert_eq!(normalize_path(&climb).is_ok(), up <= prefix.len(), "{}", climb);
    }

    #[test]
    fn matching_follows_segment_count_and_specificity(
        a in segment(),
        b in segment(),
        rest in proptest::collection::vec(segment(), 0..4),
    ) {
        let table = RouteTable::from_yaml(
            "upstreams: { u: { targets: ['127.0.0.1:1'] } }\nroutes:\n  - { name: exact, path: /api/fixed, upstream: u }\n  - { name: one, path: '/api/{id}', upstream: u }\n  - { name: tail, path: '/api/{id}/**', upstream: u }\n  - { name: reads, path: /api/fixed/**, upstream: u, methods: [GET] }\n",
            "t.yaml",
        )
        .unwrap();
        let name = |path: &str, method: &str| match table.match_request(method, path) {
            RouteMatch::Found { route, .. } => route.name().to_owned(),
            RouteMatch::MethodNotAllowed { .. } => "405".to_owned(),
            RouteMatch::NotFound => "404".to_owned(),
        };
        let deeper = format!("/api/{a}/{b}/{}", rest.join("/"));
        let deeper = normalize_path(&deeper).unwrap().into_owned();
        prop_assert_eq!(name(&format!("/api/{a}"), "POST"), if a == "fixed" { "exact" } else { "one" });
        prop_assert_eq!(name(&deeper, "POST"), if a == "fixed" { "405".to_owned() } else { "tail".to_owned() });
        prop_assert_eq!(name(&deeper, "GET"), if a == "fixed" { "reads" } else { "tail" });
        prop_assert_eq!(name(&format!("/other/{a}"), "GET"), "404", "default deny");
    }
}
