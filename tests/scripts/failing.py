machine.start()
machine.succeed("true")
machine.succeed("echo about to fail; exit 4")
