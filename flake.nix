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

      tests = import ./nix/run-test.nix {
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

      # pkgs.hutch, and pkgs.hutchTest: pkgs.testers.runNixOSTest with hutch as the backend.
      overlays.default = final: _prev: {
        hutch = hutchFor final;
        hutchTest = tests.runTestOn final;
      };

      # What a NixOS system needs to run as a hutch node (the test backend adds it to every
      # machine). An attribute set, not a path: Nix's flake checker wants a module value.
      nixosModules.node = {
        imports = [ ./nix/module.nix ];
      };

      lib = {
        # NixOS tests (nixpkgs' test framework) with hutch as the backend: nix/run-test.nix.
        #   runTest module | runTestOn pkgs test | testModule (for `imports` of runNixOSTest)
        inherit (tests) runTest runTestOn testModule;
        # The pure part (builtins only): topology and test-file generation.
        pure = import ./nix;
      };

      checks = forAllSystems (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.hutch;
        }
        // import ./nix/checks.nix {
          inherit pkgs;
          runTest = tests.runTestOn pkgs;
        }
      );
    };
}
