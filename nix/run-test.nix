# lib.runTest (and pkgs.hutchTest through the overlay): a NixOS test, written as for
# runNixOSTest (`nodes` of NixOS modules, a Python `testScript`), run by hutch in containers.
#
# Each node is evaluated with nixpkgs' nixosSystem plus nixosModules.node; the nodes' VLANs give
# the network (nix/topology.nix: numbers, addresses, hosts, the same hutch computes), the
# toplevels go into hutch's JSON test file (nix/test-file.nix), and the derivation runs
# `hutch test` on it in the build sandbox, its output directory (logs, copied files, JUnit XML)
# becoming $out. `.driverInteractive` runs the same test outside the sandbox with --interactive,
# `.driver` without.
{
  nixpkgs,
  nodeModule,
  hutchFor,
}:
{
  name,
  nodes,
  testScript,
  defaults ? { },
  # Per-node VLAN lists, overriding the nodes' `virtualisation.vlans`: { router = [ 1 2 ]; }.
  vlans ? { },
  # The package set for the build (and the nodes' platform); or give `system`.
  pkgs ? null,
  system ? null,
  hutch ? null,
  # Whole-test limit in seconds (hutch's default: one hour).
  timeout ? null,
  # Each node sees only its own closure at /nix/store (per node: hutch.closureOnly).
  closureOnly ? true,
  # What the build needs from the builder: `uid-range` gives it 65536 ids and a mounted /sys,
  # which NixOS nodes need (README, "With Nix", host requirements).
  requiredSystemFeatures ? [ "uid-range" ],
  # More arguments for `hutch test` in the build (e.g. [ "--keep-going" "--timings" ]).
  extraDriverArgs ? [ ],
  # Passed to every node's nixosSystem.
  specialArgs ? { },
}:
let
  inherit (nixpkgs) lib;
  pure = import ./default.nix;

  hostPkgs =
    if pkgs != null then
      pkgs
    else if system != null then
      nixpkgs.legacyPackages.${system}
    else
      throw "hutch.lib.runTest: pass `system` (e.g. \"x86_64-linux\") or `pkgs`";
  hutch' = if hutch != null then hutch else hutchFor hostPkgs;

  strayVlans = lib.attrNames (removeAttrs vlans (lib.attrNames nodes));

  systems = lib.mapAttrs (
    nodeName: module:
    lib.nixosSystem {
      inherit specialArgs;
      modules = [
        nodeModule
        defaults
        module
        {
          hutch.nodeName = nodeName;
          hutch.topology = topology;
          hutch.closureOnly = lib.mkDefault closureOnly;
          nixpkgs.hostPlatform = lib.mkDefault hostPkgs.stdenv.hostPlatform.system;
          # As in NixOS tests: every node's configuration, e.g. nodes.server.networking.primaryIPAddress.
          _module.args.nodes = configs;
        }
      ]
      ++ lib.optional (vlans ? ${nodeName}) { virtualisation.vlans = vlans.${nodeName}; };
    }
  ) nodes;

  configs = lib.mapAttrs (_: s: s.config) systems;

  # One network for all nodes, from their VLAN lists: what each node's networking is built from.
  topology = pure.topology (lib.mapAttrs (_: c: c.virtualisation.vlans) configs);

  # testScript may be a function of { nodes, pkgs, lib }, as in NixOS tests.
  scriptArgs = {
    nodes = configs;
    pkgs = hostPkgs;
    inherit lib;
  };
  script =
    if !(lib.isFunction testScript) then
      testScript
    else if builtins.functionArgs testScript == { } then
      testScript scriptArgs
    else
      testScript (builtins.intersectAttrs (builtins.functionArgs testScript) scriptArgs);

  # The test file; `store` is where closure_only finds the store and its database.
  testFile =
    store:
    pure.testFile {
      inherit name timeout;
      testScript = script;
      nodes = lib.mapAttrs (
        _: c: c.hutch.node // lib.optionalAttrs (store != null && c.hutch.closureOnly) { inherit store; }
      ) configs;
    };
  fileName = lib.strings.sanitizeDerivationName name;
  # In the sandbox: a store view next to the file (made by the build, see below).
  sandboxFile = hostPkgs.writeText "${fileName}-hutch-test.json" (builtins.toJSON (testFile "store-view/nix/store"));
  # On a host: the host's /nix/store and its database.
  hostFile = hostPkgs.writeText "${fileName}-hutch-test.json" (builtins.toJSON (testFile null));

  anyClosureOnly = lib.any (c: c.hutch.closureOnly) (lib.attrValues configs);
  closure = hostPkgs.closureInfo {
    rootPaths = lib.mapAttrsToList (_: c: c.system.build.toplevel) configs;
  };

  driverScript =
    mode:
    hostPkgs.writeTextFile {
      name = "hutch-driver-${fileName}${mode}";
      executable = true;
      destination = "/bin/hutch-driver";
      text = ''
        #!${hostPkgs.runtimeShell}
        # Runs the test "${name}" with hutch outside the build sandbox (logs: ./hutch-out/).
        exec ${lib.getExe hutch'} test ${hostFile} ${lib.optionalString (mode == "-interactive") "--interactive"} "$@"
      '';
      meta.mainProgram = "hutch-driver";
    };
  driver = driverScript "";
  driverInteractive = driverScript "-interactive";

  test =
    hostPkgs.runCommand "hutch-test-${fileName}"
      {
        nativeBuildInputs = [
          hutch'
          hostPkgs.nix
        ];
        inherit requiredSystemFeatures;
        passthru = {
          inherit
            driver
            driverInteractive
            topology
            sandboxFile
            ;
          nodes = configs;
          testFile = hostFile;
        };
        meta.timeout = if timeout == null then 3600 else timeout + 60;
      }
      ''
        export HOME=$TMPDIR
        ${lib.optionalString anyClosureOnly ''
          # closure_only reads the closure from a Nix database beside the store, and the sandbox
          # has none: load closureInfo's registration of the toplevels' closures into one, in a
          # chroot store whose store directory is then a relative link to the real /nix/store.
          NIX_CONFIG=$'build-users-group =\nsubstituters =' \
            nix-store --load-db --store "local?root=$PWD/store-view" < ${closure}/registration
          rm -r store-view/nix/store
          ln -s "$(realpath --relative-to="$PWD/store-view/nix" /nix/store)" store-view/nix/store
        ''}
        cp ${sandboxFile} test.json
        hutch test test.json --output-dir "$out" --junit-xml "$out/junit.xml" ${lib.escapeShellArgs extraDriverArgs}
      '';
in
if strayVlans != [ ] then
  throw "hutch.lib.runTest: `vlans` names ${lib.concatStringsSep ", " strayVlans}, which are not in `nodes`"
else
  test
