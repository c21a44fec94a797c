# hutch's declaration of `virtualisation.diskSize` for NixOS releases that lack
# nixos/modules/virtualisation/disk-size-option.nix (before 24.11); imported by ../module.nix
# only when that file does not exist. The same name, type and default as upstream's.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.virtualisation = {
    diskSizeAutoSupported = mkOption {
      type = types.bool;
      default = true;
      internal = true;
      description = "Whether `diskSize = \"auto\"` is supported (hutch: a node has no disk).";
    };
    diskSize = mkOption {
      type = types.either (types.enum [ "auto" ]) types.ints.positive;
      default = if config.virtualisation.diskSizeAutoSupported then "auto" else 1024;
      defaultText = "\"auto\" if diskSizeAutoSupported, else 1024";
      description = "A VM's disk size in MiB; accepted and ignored by hutch, whose nodes have no disk.";
    };
  };
}
