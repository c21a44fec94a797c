# hutch's flake evaluated on a stand-in nixpkgs (tests/nixpkgs_ref.rs): flake.nix's `outputs`
# called with a `nixpkgs` input made from the stand-in tree (the real lib, the real test
# framework and virtualisation modules of ../shared/nixpkgs-ref, stand-ins for the rest).
#
# The package set gets `hutch` from an overlay: the flake's own package is built from a
# lib.fileset source, which needs Nix 2.14 or later (builtins.readFileType), and CI has 2.8.
{
  standin,
  repo,
  system ? "x86_64-linux",
}:
let
  nixpkgs = {
    outPath = standin;
    lib = import (standin + "/lib");
    legacyPackages.${system} = import standin {
      inherit system;
      overlays = [ (final: _: { hutch = final.hello.override { pname = "hutch"; }; }) ];
    };
  };
  self = (import (repo + "/flake.nix")).outputs { inherit self nixpkgs; } // {
    outPath = repo;
  };
  pkgs = nixpkgs.legacyPackages.${system};

  # What a test evaluates to, as the Rust side checks it: the derivations' paths, the test file
  # for a host run, and per machine what the framework's network module configured.
  summary = test: {
    drvPath = test.drvPath;
    driver = test.driver.drvPath;
    driverInteractive = test.driverInteractive.drvPath;
    testFile = test.config.hutch.testFile;
    machines = builtins.mapAttrs (name: m: {
      toplevel = m.system.build.toplevel.outPath;
      inherit (m.networking) hostName extraHosts primaryIPAddress primaryIPv6Address;
      interfaces = builtins.mapAttrs (_: i: { inherit (i.ipv4) addresses; ipv6 = i.ipv6.addresses; }) m.networking.interfaces;
      isContainer = m.boot.isContainer;
      isNspawnContainer = m.boot.isNspawnContainer;
      # test-instrumentation.nix's backdoor shell (hutch's agent runs the commands instead).
      backdoor = m.systemd.services ? backdoor;
      systemPackages = map (p: p.name) m.environment.systemPackages;
    }) (test.config.allMachines or test.config.nodes);
  };
in
{
  inherit self pkgs nixpkgs summary;
  lib = nixpkgs.lib;
  run = test: summary (self.lib.runTestOn pkgs test);
}
