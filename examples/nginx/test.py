server.start(); client.start()
server.wait_for_unit("nginx.service")
client.wait_for_unit("multi-user.target")
client.succeed("curl http://server/posts/integration-containers | grep 'Hello from this very text block!'")
