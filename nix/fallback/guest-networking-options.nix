# hutch's declaration of the NixOS test network options for releases that lack
# nixos/modules/virtualisation/guest-networking-options.nix; imported by ../module.nix only
# when that file does not exist. The same names, types and defaults as upstream's:
# `virtualisation.vlans` become interfaces eth1, eth2, ... with addresses assigned,
# `virtualisation.interfaces` name further ones.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.virtualisation;

  interface = types.submodule (
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
          description = "The interface's name in the node.";
        };
        vlan = mkOption {
          type = types.ints.unsigned;
          description = "The VLAN the interface is on.";
        };
        assignIP = mkOption {
          type = types.bool;
          default = false;
          description = "Give the interface the test network's address on its VLAN.";
        };
      };
    }
  );

  fromVlans = lib.listToAttrs (
    lib.imap1 (
      n: vlan:
      lib.nameValuePair "eth${toString n}" {
        name = "eth${toString n}";
        inherit vlan;
        assignIP = true;
      }
    ) cfg.vlans
  );
in
{
  options = {
    networking.primaryIPAddress = mkOption {
      type = types.str;
      default = "";
      internal = true;
      description = "The node's address on its first VLAN (in every node's /etc/hosts).";
    };
    networking.primaryIPv6Address = mkOption {
      type = types.str;
      default = "";
      internal = true;
      description = "The node's IPv6 address on its first VLAN.";
    };
    virtualisation.vlans = mkOption {
      type = types.listOf types.ints.unsigned;
      default = if cfg.interfaces == { } then [ 1 ] else [ ];
      defaultText = lib.literalExpression "if config.virtualisation.interfaces == {} then [ 1 ] else [ ]";
      description = "VLANs the node is on, in order: eth1 on the first, eth2 on the second, ...";
    };
    virtualisation.interfaces = mkOption {
      type = types.attrsOf interface;
      default = { };
      description = "Interfaces besides those of `virtualisation.vlans`.";
    };
    virtualisation.allInterfaces = mkOption {
      type = types.attrsOf interface;
      readOnly = true;
      default = fromVlans // cfg.interfaces;
      description = "Every interface of the node: those of `vlans` and `interfaces`.";
    };
  };
}
