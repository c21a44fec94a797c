# hutch's JSON test file, with builtins only (no nixpkgs): what `hutch test FILE.json` reads,
# the same schema as a TOML test file (driver/src/plan/raw.rs), written by runTest and by tests.
#
#   builtins.toJSON (import ./test-file.nix {
#     name = "web";
#     testScript = "start_all()";
#     nodes.server = { toplevel = "/nix/store/...-nixos-system-server"; vlans = [ 1 ]; };
#   })
#
# Every node gets an explicit `vlans` list ([ 1 ] when not given, as in NixOS tests), so the file
# says everything hutch needs and the network checks of ./topology.nix run on it. Keys hutch does
# not know are refused here, as hutch would refuse them; `null` values are left out.
{
  name,
  testScript,
  nodes,
  timeout ? null,
}:
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    isAttrs
    isString
    mapAttrs
    removeAttrs
    ;

  known = [
    "toplevel"
    "image"
    "store"
    "closure_only"
    "vlans"
    "memory"
    "pids_max"
    "files"
    "env"
    "boot"
    "hostname"
    "interfaces"
  ];

  withoutNulls = attrs: removeAttrs attrs (filter (k: attrs.${k} == null) (attrNames attrs));

  node =
    nodeName: attrs:
    let
      unknown = attrNames (removeAttrs attrs known);
    in
    if !(isAttrs attrs) then
      throw "hutch: nodes.${nodeName} must be an attribute set of hutch node keys"
    else if unknown != [ ] then
      throw "hutch: nodes.${nodeName}: unknown key(s) ${concatStringsSep ", " unknown}; hutch knows ${concatStringsSep ", " known}"
    else if (attrs.toplevel or null) == null && (attrs.image or null) == null then
      throw "hutch: nodes.${nodeName} has neither `toplevel` nor `image`; set one"
    else
      withoutNulls attrs // { vlans = attrs.vlans or [ 1 ]; };

  fileNodes = mapAttrs node nodes;

  # The same checks (names, VLAN ranges, node counts) as the addresses the nodes are given.
  network = import ./topology.nix (mapAttrs (_: n: n.vlans) fileNodes);
in
if !(isString name) || name == "" then
  throw "hutch: the test needs a non-empty `name`"
else if !(isString testScript) then
  throw "hutch: `testScript` must be a string (the Python test script)"
else
  builtins.seq network.vlans {
    test = withoutNulls { inherit name testScript timeout; };
    nodes = fileNodes;
  }
