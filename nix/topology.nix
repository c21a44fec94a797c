# A test's network, NixOS test framework style, with builtins only (no nixpkgs), so it can be
# evaluated offline and checked against hutch's own Rust computation (tests/nix_flake.rs).
#
#   import ./topology.nix { client = [ 1 ]; router = [ 1 2 ]; server = [ 2 ]; }
#
# takes each node's VLAN list (in order: the first VLAN is eth1, the second eth2, ...) and gives
#
#   nodes.<name> = { name; number; interfaces = [ { name; vlan; mac; ipv4; ipv4Prefix; ipv6;
#                    ipv6Prefix; } ... ]; primaryIPAddress; primaryIPv6Address; }
#   vlans        every VLAN some node is on, ascending
#   extraHosts   "<first IPv4> <name>\n<first IPv6> <name>\n" per node with an interface,
#                what NixOS's test framework puts in networking.extraHosts
#   hosts        the /etc/hosts hutch writes into every node: localhost lines, then extraHosts
#
# Node number n is the position of the name in the sorted list of names, from 1 (attrNames sorts
# by bytes, as hutch's Topology does). Addresses: 192.168.<vlan>.<n>/24, 2001:db8:<vlan>::<n>/64
# (decimal digits in the hex groups, exactly as NixOS writes them), MAC 52:54:00:12:<vlan>:<n>
# in hex. Names, VLANs and node counts that hutch would refuse are refused here too, with the
# same fix in the message.
nodeVlans:
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    foldl'
    genList
    head
    isInt
    isList
    length
    listToAttrs
    match
    sort
    stringLength
    substring
    ;

  names = attrNames nodeVlans;

  hexDigits = "0123456789abcdef";
  hexByte = n: substring (n / 16) 1 hexDigits + substring (n - n / 16 * 16) 1 hexDigits;

  # hutch's rule for node names (driver/src/plan/validate_names.rs): the name is a hostname
  # and a Python variable.
  checkName =
    name:
    if match "[A-Za-z][A-Za-z0-9_-]*" name == null || stringLength name > 63 || match ".*-" name != null then
      throw "hutch: node name `${name}` is not valid: start with a letter, then letters, digits, `-` or `_`, at most 63 characters (it is the hostname and a script variable)"
    else
      name;

  checkVlans =
    name: vlans:
    let
      bad = v: !(isInt v) || v < 1 || v > 255;
      step =
        seen: v:
        if bad v then
          throw "hutch: nodes.${name}.vlans: VLAN ${toString v} is out of range; VLANs are 1 to 255"
        else if elem v seen then
          throw "hutch: nodes.${name}.vlans: VLAN ${toString v} is listed twice; list each VLAN once"
        else
          seen ++ [ v ];
    in
    if !(isList vlans) then
      throw "hutch: nodes.${name}.vlans must be a list of VLAN numbers, e.g. [ 1 2 ]"
    else
      foldl' step [ ] vlans;

  interface = number: position: vlan: {
    name = "eth${toString position}";
    inherit vlan;
    mac = "52:54:00:12:${hexByte vlan}:${hexByte number}";
    ipv4 = "192.168.${toString vlan}.${toString number}";
    ipv4Prefix = 24;
    ipv6 = "2001:db8:${toString vlan}::${toString number}";
    ipv6Prefix = 64;
  };

  mkNode =
    index: name:
    let
      number = index + 1;
      vlans = checkVlans name nodeVlans.${name};
      interfaces = genList (k: interface number (k + 1) (builtins.elemAt vlans k)) (length vlans);
    in
    {
      name = checkName name;
      inherit number interfaces;
      primaryIPAddress = if interfaces == [ ] then "" else (head interfaces).ipv4;
      primaryIPv6Address = if interfaces == [ ] then "" else (head interfaces).ipv6;
    };

  nodeList = genList (i: mkNode i (builtins.elemAt names i)) (length names);

  # Checked after the nodes so that a bad name or VLAN is reported first, like hutch does.
  onVlans = builtins.filter (n: n.interfaces != [ ]) nodeList;
  tooMany = foldl' (acc: n: acc || n.number > 254) false onVlans;

  allVlans = sort builtins.lessThan (
    foldl' (acc: v: if elem v acc then acc else acc ++ [ v ]) [ ] (
      builtins.concatMap (n: map (i: i.vlan) n.interfaces) nodeList
    )
  );

  extraHosts = concatStringsSep "" (
    map (n: "${n.primaryIPAddress} ${n.name}\n${n.primaryIPv6Address} ${n.name}\n") onVlans
  );
in
if tooMany then
  throw "hutch: more than 254 nodes are on VLANs; the NixOS address plan numbers nodes 1 to 254"
else
  {
    nodes = listToAttrs (map (n: { inherit (n) name; value = n; }) nodeList);
    vlans = allVlans;
    inherit extraHosts;
    hosts = "127.0.0.1 localhost\n::1 localhost\n" + extraHosts;
  }
