# The examples as NixOS tests run by hutch: the same test scripts (examples/*/test.py), with
# NixOS nodes in place of the Debian image. `runTest` is hutch.lib.runTestOn pkgs: these are
# test modules of nixpkgs' test framework.
{ runTest, pkgs }:
let
  # nginx serving the example's page at /posts/integration-containers.
  site = pkgs.runCommand "hutch-example-site" { } ''
    mkdir -p $out/posts
    cp ${../examples/nginx/site/post.html} $out/posts/integration-containers
    echo 'hutch-nixos nginx' > $out/index.html
  '';
  webServer = {
    services.nginx = {
      enable = true;
      virtualHosts.default = {
        default = true;
        root = site;
      };
    };
    networking.firewall.allowedTCPPorts = [ 80 ];
  };
  client =
    { pkgs, ... }:
    {
      environment.systemPackages = [ pkgs.curl ];
    };
in
{
  # examples/nginx: a web server and a client on one VLAN.
  nginx = runTest {
    name = "nginx";
    globalTimeout = 600;
    defaults.virtualisation.memorySize = 512;
    nodes.server = webServer;
    nodes.client = client;
    testScript = builtins.readFile ../examples/nginx/test.py;
  };

  # examples/router: client and server on two VLANs, joined by a router; block/unblock.
  router = runTest {
    name = "router";
    globalTimeout = 300;
    defaults.virtualisation.memorySize = 256;
    nodes.client = {
      imports = [ client ];
      virtualisation.vlans = [ 1 ];
    };
    nodes.router.virtualisation.vlans = [
      1
      2
    ];
    nodes.server = {
      imports = [ webServer ];
      virtualisation.vlans = [ 2 ];
    };
    # The Debian image's nginx page says "hutch-debian nginx"; the NixOS one above says this.
    testScript =
      builtins.replaceStrings [ "hutch-debian nginx" ] [ "hutch-nixos nginx" ]
        (builtins.readFile ../examples/router/test.py);
  };
}
