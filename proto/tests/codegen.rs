//! The generated gRPC code is committed (`proto/src/gen/`) so that no build needs `protoc`.
//! This test regenerates it with the pure-Rust `protox` compiler and fails on any difference.
//! Run with `SHARDMETRICS_REGENERATE=1` to rewrite the committed file after editing the proto.

use std::path::Path;

#[test]
fn committed_generated_code_matches_the_proto_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["shardmetrics/v1/samples.proto"], [root]).expect("proto compiles");
    let out = tempfile::tempdir().expect("tempdir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation succeeds");
    let generated = std::fs::read_to_string(out.path().join("shardmetrics.v1.rs")).expect("generated file");
    let committed_path = root.join("src/gen/shardmetrics.v1.rs");
    if std::env::var_os("SHARDMETRICS_REGENERATE").is_some() {
        std::fs::write(&committed_path, &generated).expect("write generated code");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "proto/src/gen/shardmetrics.v1.rs is out of date with samples.proto; \
         run `SHARDMETRICS_REGENERATE=1 cargo test -p shardmetrics-proto --test codegen`"
    );
}
