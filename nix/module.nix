# nixosModules.node: what a NixOS system needs to run as a hutch node.
#
# hutch boots `config.system.build.toplevel`'s `init` as PID 1 on an empty tmpfs root with the
# Nix store bind-mounted read-only, in its own namespaces; its network interfaces (eth1, eth2,
# ... one per VLAN, addresses already set) and its agent (which runs the test script's commands)
# are hutch's. So the system is a container (no kernel, no boot loader, no udev), logs to the
# console hutch records, and runs no getty: nobody logs in, commands come through the agent.
#
# The test network's options (`virtualisation.vlans`, `virtualisation.interfaces`,
# `networking.primaryIPAddress`) and `virtualisation.diskSize` are NixOS's own where this NixOS
# has the files that declare them (24.11 and later), imported from `modulesPath`, so this module
# never declares an option twice; hutch's fallback declarations (./fallback) stand in for them
# on older releases only. Addresses and /etc/hosts come from the NixOS test framework's network
# module (hutch's runTest is a backend of that framework), which assigns what hutch's netns sets.
{
  config,
  lib,
  modulesPath,
  ...
}:
let
  inherit (lib)
    mkDefault
    mkForce
    mkOption
    mkOverride
    types
    ;

  cfg = config.hutch;

  # Upstream's option file when this NixOS has it, else hutch's declaration of the same options.
  upstreamOr =
    file:
    let
      upstream = "${modulesPath}/virtualisation/${file}";
    in
    if builtins.pathExists upstream then upstream else ./fallback + "/${file}";
in
{
  imports = [
    (upstreamOr "disk-size-option.nix")
    (upstreamOr "guest-networking-options.nix")
  ];

  options.hutch = {
    memory = mkOption {
      type = types.nullOr (types.either types.str types.ints.positive);
      default =
        let
          mib = config.virtualisation.memorySize or null;
        in
        if mib == null then null else "${toString mib}M";
      defaultText = lib.literalExpression ''"''${toString config.virtualisation.memorySize}M" (when declared)'';
      example = "512M";
      description = "Memory limit of the node's cgroup (hutch's `memory`), or null for none; a test's `virtualisation.memorySize` by default.";
    };

    pidsMax = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Limit on the node's number of processes (hutch's `pids_max`).";
    };

    env = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "Extra environment for the node's init (hutch's `env`).";
    };

    closureOnly = mkOption {
      type = types.bool;
      default = true;
      description = "Mount only this system's closure at /nix/store, not the whole store (hutch's `closure_only`).";
    };

    node = mkOption {
      type = types.raw;
      readOnly = true;
      internal = true;
      description = "This node's entry in hutch's test file (without `store` and `hostname`, which the test adds).";
    };
  };

  config = {
    hutch.node = {
      toplevel = "${config.system.build.toplevel}";
      # hutch names a node's interfaces eth1, eth2, ... in the order of its VLANs, as
      # `virtualisation.vlans` does (guest-networking-options.nix), and MACs as QEMU's NICs.
      vlans = config.virtualisation.vlans;
      # Interfaces named in `virtualisation.interfaces`, each on a VLAN of its own.
      interfaces =
        let
          named = lib.attrValues config.virtualisation.interfaces;
        in
        if named == [ ] then
          null
        else
          map (i: {
            inherit (i) name vlan;
            assign_ip = i.assignIP;
          }) named;
      memory = cfg.memory;
      pids_max = cfg.pidsMax;
      env = if cfg.env == { } then null else cfg.env;
      closure_only = cfg.closureOnly;
    };

    # A container: no kernel, initrd, boot loader or udev (container-config.nix does the rest).
    boot.isContainer = true;

    networking.useDHCP = mkDefault false;
    networking.usePredictableInterfaceNames = mkDefault false;
    # No host resolv.conf is bound into a hutch node (container-config.nix assumes nspawn's).
    networking.useHostResolvConf = mkOverride 900 false;
    # No way out of the test's LANs, as in test-instrumentation.nix.
    networking.defaultGateway = mkOverride 150 null;
    networking.defaultGateway6 = mkOverride 150 null;
    networking.nameservers = mkOverride 150 [ ];

    # The journal on the console hutch records (per-node logs), and slow starts allowed, as in
    # test-instrumentation.nix. Drop-in files, so they hold whatever NixOS's option names are.
    environment.etc."systemd/journald.conf.d/hutch.conf".text = ''
      [Journal]
      ForwardToConsole=yes
      MaxLevelConsole=debug
    '';
    environment.etc."systemd/system.conf.d/hutch.conf".text = ''
      [Manager]
      ShowStatus=no
      DefaultTimeoutStartSec=300
      DefaultDeviceTimeoutSec=300
    '';

    # No getty anywhere: the console is hutch's log, and commands come through its agent.
    systemd.services."console-getty".enable = mkDefault false;
    systemd.services."container-getty@".enable = mkDefault false;
    systemd.services."getty@".enable = mkDefault false;
    systemd.services."autovt@".enable = mkDefault false;
    systemd.services."serial-getty@".enable = mkDefault false;

    # In a build sandbox no_new_privs is set: setuid does not work, so PAM's helpers fail.
    services.openssh.settings.UsePAM = mkDefault false;

    # The rest of test-instrumentation.nix and nixos-test-base.nix that applies to a container.
    services.logrotate.enable = mkOverride 150 false;
    documentation.nixos.enable = mkDefault false;
    system.stateVersion = mkOverride 1200 lib.trivial.release;
    system.nixos = {
      # Constant, so a new nixpkgs revision alone does not rebuild every test.
      revision = mkForce "constant-nixos-revision";
      versionSuffix = mkForce "test";
      label = mkForce "test";
    };
  };
}
