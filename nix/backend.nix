# hutch as a backend of nixpkgs' NixOS test framework (nixos/lib/testing): a test module that,
# added to a test, makes every machine (`nodes` and `containers`) a hutch container and swaps
# the framework's driver and test derivation for hutch's. Everything else is the framework's
# own: its options (`name`, `nodes`, `containers`, `defaults`, `testScript`, `node.pkgs`,
# `hostPkgs`, `interactive`, `globalTimeout`, `meta`, `passthru`, ...), its network module
# (node numbers, addresses, /etc/hosts, `nodes.<n>.networking.primaryIPAddress`), and how
# machines are evaluated (`node.type` and `container.type` are upstream's, plus two modules).
#
#   nixos-lib.runTest { imports = [ hutch.lib.testModule ./my-test.nix ]; hostPkgs = pkgs; }
#
# The JSON test file lists every machine's toplevel and VLANs, the test script and the global
# timeout; `hutch test` runs it, in the build sandbox (the derivation, $out = logs and JUnit
# XML) or on the host (`.driver`, `.driverInteractive`).
{ nodeModule, hutchFor }:
{
  config,
  options,
  lib,
  hostPkgs,
  ...
}:
let
  inherit (lib) mkForce mkOption types;
  cfg = config.hutch;
  pure = import ./default.nix;

  # Upstream's machine type with hutch's modules added to every machine evaluated with it.
  # test-node.nix learns which VM options the type declares without qemu-vm.nix, to declare
  # only the others.
  withHutch =
    type:
    let
      add = modules: type.substSubModules (type.getSubModules ++ modules);
      upstream = (add [ { disabledModules = [ "virtualisation/qemu-vm.nix" ]; } ]).getSubOptions [ ];
    in
    add [
      nodeModule
      {
        _file = ./test-node.nix;
        imports = [ (import ./test-node.nix { inherit upstream; }) ];
      }
    ];

  machines = config.allMachines or config.nodes;

  # Settings that need a VM, per machine, and test options that need a screen.
  vmNodes = lib.filterAttrs (_: needs: needs != [ ]) (lib.mapAttrs (_: m: m.hutch.vmNeeds) machines);
  screenCalls = lib.unique (
    lib.concatMap (m: if builtins.isList m then [ (lib.head m) ] else [ ]) (
      builtins.split "([A-Za-z_][A-Za-z0-9_]*)\\.(screenshot|send_key|send_chars|wait_for_text|wait_for_x|get_screen_text|get_screen_text_variants|wait_for_window)\\(" config.testScriptString
    )
  );
  vmReasons =
    lib.mapAttrsToList (n: needs: "${n}: ${lib.concatStringsSep ", " needs}") vmNodes
    ++ lib.optional (config.enableOCR or false) "enableOCR = true: the test reads a screen"
    ++ lib.optional (screenCalls != [ ]) "the test script uses the screen or keyboard of ${lib.concatStringsSep ", " screenCalls}";
  refuse = lib.throwIf (vmReasons != [ ]) ''
    hutch: test `${config.name}' needs a VM, which a hutch container cannot be:
    ${lib.concatMapStrings (r: "  - ${r}\n") vmReasons}Run it with nixpkgs' QEMU driver (pkgs.testers.runNixOSTest), or drop these settings.'';

  # hutch's network has one link per machine and VLAN: a machine's interfaces (those of
  # `virtualisation.vlans` and the named ones) must each be on a VLAN of its own.
  sharedVlans = lib.filterAttrs (_: vs: vs != [ ]) (
    lib.mapAttrs (
      _: m:
      let
        vlans = map (i: i.vlan) (lib.attrValues m.virtualisation.allInterfaces);
      in
      lib.unique (lib.filter (v: lib.count (w: w == v) vlans > 1) vlans)
    ) machines
  );
  refuseShared = lib.throwIf (sharedVlans != { }) ''
    hutch: test `${config.name}': a hutch machine has one interface per VLAN, and these have more:
    ${lib.concatStrings (
      lib.mapAttrsToList (n: vs: "  - ${n}: VLAN ${lib.concatMapStringsSep ", " toString vs}\n") sharedVlans
    )}Give each of the machine's interfaces (virtualisation.vlans and virtualisation.interfaces) a VLAN of its own.'';

  ignored = lib.filterAttrs (_: s: s != [ ]) (lib.mapAttrs (_: m: m.hutch.ignoredSettings) machines);
  driverArgs = [
    "--interactive"
    "--keep-going"
    "--timings"
  ];
  strayArgs = lib.filter (a: !lib.elem a driverArgs) config.extraDriverArgs;
  warn =
    lib.warnIf (ignored != { })
      "hutch: test `${config.name}': these VM settings have no effect on hutch's containers: ${
        lib.concatStringsSep "; " (lib.mapAttrsToList (n: s: "${n}: ${lib.concatStringsSep ", " s}") ignored)
      }"
      (
        lib.warnIf (strayArgs != [ ])
          "hutch: test `${config.name}': driver arguments for QEMU's driver are ignored: ${lib.concatStringsSep " " strayArgs}${lib.optionalString (config.sshBackdoor.enable or false) " (sshBackdoor: use .driverInteractive and a machine's shell_interact())"}"
      );

  # A machine sees only its own closure (hutch.closureOnly) unless the test script names store
  # paths (`${pkgs.foo}/bin/foo`), which run in the machines, or the machine asks for more
  # (`virtualisation.additionalPaths`): then it sees the whole store, as QEMU machines do
  # through 9p.
  closureOnly =
    m:
    m.hutch.closureOnly
    && m.virtualisation.additionalPaths or [ ] == [ ]
    && !builtins.hasContext config.testScriptString;

  # The test file; `store` is where closure_only finds the store and its database.
  testFile =
    store:
    lib.pipe
      (pure.testFile {
        inherit (config) name;
        testScript = config.testScriptString;
        timeout = config.globalTimeout;
        nodes = lib.mapAttrs (
          name: m:
          m.hutch.node
          // {
            hostname = if m.networking.hostName == name then null else m.networking.hostName;
            closure_only = closureOnly m;
          }
          // lib.optionalAttrs (store != null && closureOnly m) { inherit store; }
        ) machines;
      })
      [
        warn
        refuseShared
        refuse
      ];
  fileName = lib.strings.sanitizeDerivationName config.name;
  # In the sandbox: a store view next to the file (made by the test's build, below).
  sandboxFile = hostPkgs.writeText "${fileName}-hutch-test.json" (builtins.toJSON (testFile "store-view/nix/store"));
  # On a host: the host's /nix/store and its database.
  hostFile = hostPkgs.writeText "${fileName}-hutch-test.json" (builtins.toJSON (testFile null));

  anyClosureOnly = lib.any closureOnly (lib.attrValues machines);
  closure = hostPkgs.closureInfo {
    rootPaths = lib.mapAttrsToList (_: m: m.system.build.toplevel) machines;
  };

  # The test script's Python, with the test's `extraPythonPackages`.
  python = hostPkgs.python3.withPackages config.extraPythonPackages;
  hutchArgs = lib.filter (a: lib.elem a driverArgs) config.extraDriverArgs;
in
{
  options.hutch = {
    package = mkOption {
      type = types.package;
      default = hostPkgs.hutch or (hutchFor hostPkgs);
      defaultText = lib.literalExpression "hostPkgs.hutch or hutch built for hostPkgs";
      description = "The hutch that runs the test.";
    };
    requiredSystemFeatures = mkOption {
      type = types.listOf types.str;
      default = [ "uid-range" ];
      description = "What the test's build needs from the builder: `uid-range` gives it 65536 ids and a mounted /sys, which NixOS nodes need (README, \"With Nix\").";
    };
    testFile = mkOption {
      type = types.raw;
      readOnly = true;
      internal = true;
      default = testFile null;
      description = "hutch's test file (as an attribute set) for a run on the host.";
    };
  };

  config = {
    node.type = mkForce (withHutch options.node.type.default);

    driver = mkForce (
      hostPkgs.writeTextFile {
        name = "hutch-driver-${fileName}";
        executable = true;
        destination = "/bin/nixos-test-driver";
        text = ''
          #!${hostPkgs.runtimeShell}
          # Runs the test "${config.name}" with hutch outside the build sandbox (logs: ./hutch-out/).
          export HUTCH_PYTHON=${lib.getExe python}
          exec ${lib.getExe cfg.package} test ${hostFile} ${lib.escapeShellArgs hutchArgs} "$@"
        '';
        meta.mainProgram = "nixos-test-driver";
      }
    );

    rawTestDerivationArg = mkForce (_: {
      name = "hutch-test-${fileName}";
      inherit (cfg) requiredSystemFeatures;
      nativeBuildInputs = [
        cfg.package
        hostPkgs.nix
      ];
      HUTCH_PYTHON = lib.getExe python;
      buildCommand = ''
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
        hutch test test.json --output-dir "$out" --junit-xml "$out/junit.xml" ${
          lib.escapeShellArgs (lib.remove "--interactive" hutchArgs)
        }
      '';
      passthru = config.passthru;
      meta = config.meta;
    });

    passthru.hutch = {
      inherit sandboxFile;
      testFile = hostFile;
    };
  }
  // lib.optionalAttrs (options ? container.type) {
    container.type = mkForce (withHutch options.container.type.default);
  };
}
