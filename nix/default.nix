# The pure part of hutch's Nix support: builtins only, no nixpkgs, evaluable offline.
#
#   topology  { <node> = [ vlan ... ]; } -> numbers, interfaces, addresses, hosts (topology.nix)
#   testFile  { name; testScript; nodes; timeout ? null; } -> hutch's JSON test file as an
#             attribute set, ready for builtins.toJSON (test-file.nix)
#   test      both at once: { file; topology; json; } for the same nodes, so that what a test
#             file says and what the nodes are configured with cannot drift apart
rec {
  topology = import ./topology.nix;
  testFile = import ./test-file.nix;

  test =
    args:
    let
      file = testFile args;
    in
    {
      inherit file;
      topology = topology (builtins.mapAttrs (_: n: n.vlans) file.nodes);
      json = builtins.toJSON file;
    };
}
