# The hutch binary, built from the workspace and its Cargo.lock.
#
# `cargo test --workspace` runs in the build sandbox. Tests that need root skip themselves there
# (the builder is not root); `sandboxSkips` lists those that fail there for another reason.
# Found by running every compiled test binary of the workspace inside Nix's build sandbox
# (Nix 2.8, /bin/sh the only program outside the store, tools only on PATH):
# - two tests build an image with the project's fixture scripts (debootstrap, apt);
# - four agent tests run `bash`, `ls`, `false` through the agent, which looks for them at the
#   FHS and NixOS places (/bin, /usr/bin, /run/current-system/sw/bin), none of which the
#   sandbox has.
{
  lib,
  rustPlatform,
  pkg-config,
  sqlite,
  python3,
  util-linux,
  iproute2,
  iputils,
  makeWrapper,
  src,
  sandboxSkips ? [
    "bad_input_gets_one_line_and_exit_125"
    "a_bad_test_file_exits_2_and_starts_nothing"
    "commands_inherit_no_stray_descriptors"
    "exit_codes_and_signals"
    "shell_is_strict_and_has_a_login_environment"
    "stdout_stderr_stdin_and_env_are_separate"
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
  # .cargo/config.toml links hutch statically (glibc's and SQLite's static libraries), which
  # nixpkgs ships apart (glibc.static); Nix builds the default dynamic binary instead: empty
  # encoded flags take precedence over the config's. Not built here (no nixpkgs offline).
  env.CARGO_ENCODED_RUSTFLAGS = "";

  # The script bridge's tests run the Python test driver module; netns's rootless test makes a
  # user namespace with unshare and checks the LAN with ip and ping.
  nativeCheckInputs = [
    python3
    util-linux
    iproute2
    iputils
  ];
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
