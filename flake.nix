{
  description = "hutch: NixOS-style multi-machine integration tests in Linux namespaces";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # What cargo needs: the workspace, its tests and benches (declared in Cargo.toml).
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./src
          ./runtime
          ./netns
          ./driver
          ./tests
          ./benches
        ];
      };

      hutchFor = pkgs: pkgs.callPackage ./nix/package.nix { inherit src; };

      runTest = import ./nix/run-test.nix {
        inherit nixpkgs hutchFor;
        nodeModule = self.nixosModules.node;
      };
    in
    {
      packages = forAllSystems (pkgs: rec {
        hutch = hutchFor pkgs;
        default = hutch;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.hutch ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            python3
            # tests and fixtures: nix-instantiate (tests/nix_flake.rs), ip/unshare/nsenter
            # (checks in tests), shellcheck (fixtures/), debootstrap (the Debian image)
            nix
            iproute2
            util-linux
            shellcheck
            debootstrap
          ];
        };
      });

      # pkgs.hutch, and pkgs.hutchTest { name; nodes; testScript; ... } (see lib.runTest).
      overlays.default = final: _prev: {
        hutch = hutchFor final;
        hutchTest = args: runTest ({ pkgs = final; } // args);
      };

      # What a NixOS system needs to run as a hutch node (runTest adds it to every node).
      nixosModules.node = ./nix/module.nix;

      lib = {
        # runTest { name; nodes; testScript; defaults ? {}; vlans ? {}; system | pkgs; ... }
        inherit runTest;
        # The pure part (builtins only): topology and test-file generation.
        pure = import ./nix;
      };

      checks = forAllSystems (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.hutch;
        }
        // import ./nix/checks.nix { inherit runTest pkgs; }
      );
    };
}
