fn main() {
    connectrpc_build::Config::new()
        .files(&[
            "proto/process/process.proto",
            "proto/filesystem/filesystem.proto",
        ])
        .includes(&["proto/", "/usr/include"])
        .include_file("_connectrpc.rs")
        .compile()
        .expect("compiling envd protos (is protoc installed?)");
}
