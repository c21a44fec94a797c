# What the NixOS test framework's nodes and containers get, besides nixosModules.node, when
# hutch runs the test (added to every machine by ./backend.nix).
#
# A test written for QEMU sets VM options (`virtualisation.memorySize`, `cores`, `qemu.*`,
# `useBootLoader`, ...), and the framework itself sets some (`qemu.package`, `additionalPaths`).
# Upstream declares them in qemu-vm.nix, which also makes the system a VM (kernel, initrd, disk
# images, 9p mounts). hutch's machines are containers, so qemu-vm.nix is disabled and the VM
# options are declared here instead, with upstream's types and defaults, so that the same node
# modules evaluate: `memorySize` becomes the node's memory limit; settings that need a VM
# (a boot loader, EFI, extra disks) make the test refuse to evaluate (backend.nix); the rest
# are accepted and ignored with one warning that names them.
#
# `upstream` is the option tree of the machine's own type without qemu-vm.nix (backend.nix):
# an option some other NixOS module declares (a container module that learns `memorySize`,
# say) is left to it, so this module never declares an option twice.
{ upstream }:
{
  config,
  lib,
  options,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.virtualisation;

  option =
    type: default: description:
    mkOption { inherit type default description; };
  flag = default: description: option types.bool default description;
  list = description: option (types.listOf types.str) [ ] description;

  # The VM options, by their names under `virtualisation`.
  vmOptions = {
    memorySize = option types.ints.positive 1024 "Memory in MiB: the node's memory limit under hutch.";
    cores = option types.ints.positive 1 "A VM's CPUs; a hutch node shares the host's.";
    graphics = flag true "A VM's screen; a hutch node has none.";
    resolution = option (types.attrsOf types.ints.positive) {
      x = 1024;
      y = 768;
    } "A VM's screen resolution.";
    useBootLoader = flag false "Boot a VM through a boot loader (needs a VM).";
    useEFIBoot = flag false "Boot a VM with EFI firmware (needs a VM).";
    installBootLoader = flag false "Install the boot loader into a VM's disk.";
    emptyDiskImages = option (types.listOf (types.either types.ints.positive types.attrs)) [ ] "Extra disks for a VM (needs a VM).";
    "tpm.enable" = flag false "A TPM for a VM (needs a VM).";
    writableStore = flag true "An overlay on a VM's store.";
    writableStoreUseTmpfs = flag true "The store overlay on a tmpfs.";
    useNixStoreImage = flag false "A disk image of the store for a VM.";
    mountHostNixStore = flag true "The host's store in a VM over 9p.";
    useDefaultFilesystems = flag true "A VM's default file systems.";
    additionalPaths = option (types.listOf types.path) [ ] "Store paths a VM needs besides its system's closure.";
    sharedDirectories = option (types.attrsOf types.attrs) { } "Host directories shared with a VM.";
    forwardPorts = option (types.listOf types.attrs) [ ] "Ports forwarded from the host to a VM.";
    restrictNetwork = flag false "Cut a VM off from the host's network.";
    diskImage = option (types.nullOr types.str) "./${config.system.name}.qcow2" "A VM's disk image.";
    "host.pkgs" = option types.raw null "The package set of the VM's host.";
    "qemu.package" = option types.raw null "The QEMU package.";
    "qemu.options" = list "Extra QEMU arguments.";
    "qemu.networkingOptions" = list "QEMU's networking arguments.";
    "qemu.consoles" = list "QEMU's consoles.";
    "qemu.enableSharedMemory" = flag false "Shared memory for virtiofs and the SSH backdoor.";
  };

  # A setting counts as set when a definition above option-default priority (mkDefault and
  # plain ones) gives it a value other than its default (compared for plain values only: a
  # package set is never compared, its definition is enough).
  isSet =
    path:
    let
      o = lib.attrByPath path null options;
      plain = v: builtins.isBool v || builtins.isInt v || builtins.isString v || builtins.isList v || v == null;
    in
    o != null && o.highestPrio < 1500 && (!(plain o.value) || o.value != (o.default or null));

  # What a container cannot do and nothing can stand in for.
  needsVm = {
    "virtualisation.useBootLoader" = "a boot loader";
    "virtualisation.useEFIBoot" = "EFI firmware";
    "virtualisation.emptyDiskImages" = "extra disks";
    "virtualisation.tpm.enable" = "a TPM";
  };
  # What a container does its own way: the setting has no effect on a hutch node.
  ignored = [
    "virtualisation.cores"
    "virtualisation.diskSize"
    "virtualisation.graphics"
    "virtualisation.resolution"
    "virtualisation.writableStore"
    "virtualisation.writableStoreUseTmpfs"
    "virtualisation.useNixStoreImage"
    "virtualisation.mountHostNixStore"
    "virtualisation.useDefaultFilesystems"
    "virtualisation.sharedDirectories"
    "virtualisation.forwardPorts"
    "virtualisation.restrictNetwork"
    "virtualisation.diskImage"
    "virtualisation.qemu.networkingOptions"
    "virtualisation.qemu.consoles"
    "boot.kernelPackages"
  ];
  setAmong = names: lib.filter (n: isSet (lib.splitString "." n)) names;
in
{
  disabledModules = [ "virtualisation/qemu-vm.nix" ];

  options.hutch = {
    vmNeeds = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      internal = true;
      default = map (n: "${n} (${needsVm.${n}})") (setAmong (lib.attrNames needsVm));
      description = "The node's settings that need a VM, with what they need.";
    };
    ignoredSettings = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      internal = true;
      default = setAmong ignored;
      description = "The node's VM settings that have no effect on a hutch node.";
    };
  };

  options.virtualisation = lib.foldl' (
    acc: name:
    let
      path = lib.splitString "." name;
    in
    if lib.hasAttrByPath path upstream.virtualisation or { } then
      acc
    else
      lib.recursiveUpdateUntil (_: l: r: l ? _type || r ? _type) acc (lib.setAttrByPath path vmOptions.${name})
  ) { } (lib.attrNames vmOptions);

  config = {
    # hutch's agent runs the test script's commands; the QEMU backdoor shell would wait for a
    # virtio console that does not exist.
    testing = lib.optionalAttrs (options ? testing.backdoor) { backdoor = false; };
    assertions = lib.optional (cfg.memorySize < 64) {
      assertion = false;
      message = "virtualisation.memorySize = ${toString cfg.memorySize} is below 64 MiB, too little for a NixOS node under hutch; raise it";
    };
  };
}
