# The hutch binary, built from the workspace and its Cargo.lock.
#
# `cargo test --workspace` runs in the build sandbox. Tests that need root or namespaces skip
# themselves there (the builder is not root). `sandboxSkips` lists the tests that do not: they
# build an image with the project's fixture scripts (debootstrap, apt), which a sandbox cannot.
# Found by running every compiled test binary of the workspace inside Nix's build sandbox.
{
  lib,
  rustPlatform,
  pkg-config,
  sqlite,
  python3,
  makeWrapper,
  src,
  sandboxSkips ? [
    "bad_input_gets_one_line_and_exit_125"
    "a_bad_test_file_exits_2_and_starts_nothing"
  ],
}:
let
  manifest = lib.importTOML (src + "/Cargo.toml");
in
rustPlatform.buildRustPackage {
  pname = "hutch";
  inherit (manifest.workspace.package) version;
  inherit src;

  cargoLock.lockFile = src + "/Cargo.lock";

  nativeBuildInputs = [
    pkg-config
    makeWrapper
  ];
  # rusqlite (the store database read by closure_only) links the system's SQLite.
  buildInputs = [ sqlite ];

  # The script bridge's tests run the Python test driver module.
  nativeCheckInputs = [ python3 ];
  cargoTestFlags = [ "--workspace" ];
  checkFlags = lib.concatMap (t: [
    "--skip"
    t
  ]) sandboxSkips;

  # `hutch test` runs the test script with $HUTCH_PYTHON (stdlib only); default to this Python.
  postInstall = ''
    wrapProgram $out/bin/hutch --set-default HUTCH_PYTHON ${lib.getExe python3}
  '';

  meta = {
    description = manifest.package.description;
    mainProgram = "hutch";
    license = with lib.licenses; [
      mit
      asl20
    ];
    platforms = lib.platforms.linux;
  };
}
