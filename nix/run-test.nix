# hutch.lib.runTest, runTestOn and testModule: NixOS tests, written for nixpkgs' test framework,
# run by hutch in containers (./backend.nix says how).
#
#   runTest module        as nixpkgs' `nixos-lib.runTest`: the module sets `hostPkgs`
#   runTestOn pkgs test   as `pkgs.testers.runNixOSTest`: hostPkgs and node.pkgs are `pkgs`
#   testModule            the backend alone, for `imports` in any runNixOSTest call
#
# `test` may be a test module (a file, an attribute set or a function, as in nixos/tests), a
# file in the older make-test-python.nix style (a function of { system ? .., pkgs ? .., ... }
# returning a finished test), or a finished test itself (anything with `.extend`, such as
# runNixOSTest's result): those are extended with the backend, so the framework that made them
# evaluates them, with hutch's driver.
{
  nixpkgs,
  nodeModule,
  hutchFor,
}:
let
  inherit (nixpkgs) lib;
  nixosLib = import (nixpkgs.outPath + "/nixos/lib") { inherit lib; };

  testModule = {
    key = "hutch-test-backend";
    imports = [ (import ./backend.nix { inherit nodeModule hutchFor; }) ];
  };

  # A make-test-python.nix file gives defaults to both `system` and `pkgs`; a test module's
  # function is called by the module system, which never passes `system`.
  madeByMakeTest =
    value:
    let
      args = lib.functionArgs value;
    in
    lib.isFunction value && (args.system or false) && (args.pkgs or false);

  finished =
    callArgs: test:
    let
      value = if builtins.isPath test || builtins.isString test then import test else test;
    in
    if builtins.isAttrs value && value ? extend then
      value
    else if madeByMakeTest value then
      value callArgs
    else
      null;

  extend = test: test.extend { modules = [ testModule ]; };

  # The test with the backend: extended when already made, else evaluated by the framework
  # with `setup` (a module: the package sets) beside it.
  run =
    callArgs: setup: test:
    let
      made = finished callArgs test;
    in
    if made != null then
      extend made
    else
      nixosLib.runTest {
        imports = [
          testModule
          setup
          test
        ];
      };

  runTest = run { } { };

  runTestOn =
    pkgs:
    run
      {
        inherit pkgs;
        inherit (pkgs.stdenv.hostPlatform) system;
      }
      {
        hostPkgs = pkgs;
        node.pkgs = lib.mkDefault pkgs;
      };
in
{
  inherit runTest runTestOn testModule;
}
