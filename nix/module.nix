# nixosModules.node: what a NixOS system needs to run as a hutch node.
#
# hutch boots `config.system.build.toplevel`'s `init` as PID 1 on an empty tmpfs root with the
# Nix store bind-mounted read-only, in its own namespaces; its network interfaces (eth1, eth2,
# ... one per VLAN, addresses already set) and its agent (which runs the test script's commands)
# are hutch's. So the system is a container (no kernel, no boot loader, no udev), configures the
# addresses the NixOS test framework would (the same ones hutch set: its scripted networking
# accepts them as they are), lists every node in /etc/hosts, logs to the console hutch records,
# and runs no getty: nobody logs in, commands come through the agent.
#
# runTest sets `hutch.nodeName` and `hutch.topology` for every node; on its own the module
# describes a one-node network named "machine" on `virtualisation.vlans`.
{
  config,
  lib,
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
  pure = import ./default.nix;
  me =
    cfg.topology.nodes.${cfg.nodeName}
      or (throw "hutch: node `${cfg.nodeName}` is not in the test's topology (hutch.topology)");

  address = address: prefixLength: [ { inherit address prefixLength; } ];
in
{
  options = {
    hutch = {
      nodeName = mkOption {
        type = types.str;
        default = "machine";
        description = "The node's name in the test (`nodes.<name>`): its host name, script variable and place in the numbering.";
      };

      topology = mkOption {
        type = types.raw;
        internal = true;
        default = pure.topology { ${cfg.nodeName} = config.virtualisation.vlans; };
        defaultText = lib.literalMD "a network of this node alone";
        description = "The whole test's network as nix/topology.nix computes it: numbers, addresses, hosts.";
      };

      memory = mkOption {
        type = types.nullOr (types.either types.str types.ints.positive);
        default =
          if config.virtualisation.memorySize == null then
            null
          else
            "${toString config.virtualisation.memorySize}M";
        defaultText = lib.literalExpression ''"''${toString config.virtualisation.memorySize}M"'';
        example = "512M";
        description = "Memory limit of the node's cgroup (hutch's `memory`), or null for none.";
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
        description = "This node's entry in hutch's test file (without `store`, which depends on where the test runs).";
      };
    };

    # The NixOS test framework's node options that keep their meaning in a container, so node
    # modules written for runNixOSTest evaluate unchanged.
    virtualisation.vlans = mkOption {
      type = types.listOf types.ints.unsigned;
      default = [ 1 ];
      description = "VLANs the node is on, in order: eth1 on the first, eth2 on the second, ...";
    };
    virtualisation.memorySize = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Memory limit in MiB (a VM's memory size in NixOS tests); null: no limit.";
    };
    virtualisation.cores = mkOption {
      type = types.ints.positive;
      default = 1;
      description = "Accepted for NixOS test compatibility and ignored: a hutch node shares the host's CPUs.";
    };
    virtualisation.diskSize = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      description = "Accepted for NixOS test compatibility and ignored: a hutch node's root is a tmpfs.";
    };
    virtualisation.graphics = mkOption {
      type = types.bool;
      default = false;
      description = "Accepted for NixOS test compatibility and ignored: a hutch node has no screen.";
    };
    networking.primaryIPAddress = mkOption {
      type = types.str;
      default = "";
      internal = true;
      description = "The node's address on its first VLAN, as in NixOS tests.";
    };
    networking.primaryIPv6Address = mkOption {
      type = types.str;
      default = "";
      internal = true;
      description = "The node's IPv6 address on its first VLAN, as in NixOS tests.";
    };
  };

  config = {
    hutch.node =
      let
        hostName = config.networking.hostName;
      in
      {
        toplevel = "${config.system.build.toplevel}";
        vlans = config.virtualisation.vlans;
        memory = cfg.memory;
        pids_max = cfg.pidsMax;
        env = if cfg.env == { } then null else cfg.env;
        closure_only = cfg.closureOnly;
        hostname = if hostName == "" || hostName == cfg.nodeName then null else hostName;
      };

    # A container: no kernel, initrd, boot loader or udev (container-config.nix does the rest).
    boot.isContainer = true;

    # Networking as nixos/lib/testing/network.nix does it, from the same numbers hutch uses.
    networking.hostName = mkDefault cfg.nodeName;
    networking.useDHCP = mkDefault false;
    networking.usePredictableInterfaceNames = mkDefault false;
    networking.interfaces = builtins.listToAttrs (
      map (i: {
        inherit (i) name;
        value = {
          ipv4.addresses = address i.ipv4 i.ipv4Prefix;
          ipv6.addresses = address i.ipv6 i.ipv6Prefix;
        };
      }) me.interfaces
    );
    networking.primaryIPAddress = me.primaryIPAddress;
    networking.primaryIPv6Address = me.primaryIPv6Address;
    networking.extraHosts = cfg.topology.extraHosts;
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
