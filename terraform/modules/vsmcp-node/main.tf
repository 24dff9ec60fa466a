locals {
  # The systemd unit is the repository's own (systemd/vsmcpd.service), never a copy.
  unit = file("${path.module}/../../../systemd/vsmcpd.service")

  # Every template value is JSON: a JSON string, number, boolean or list of strings is
  # also a valid TOML value and a valid YAML flow value.
  config = {
    for name, node_id in var.nodes : name => templatefile("${path.module}/templates/vsmcp.toml.tftpl", {
      name                 = jsonencode(name)
      http_port            = jsonencode(var.http_port)
      mesh_host            = jsonencode(var.mesh_host)
      mesh_port            = jsonencode(var.mesh_port)
      mesh_name            = jsonencode(var.mesh_name)
      preset               = jsonencode(var.preset)
      mdns                 = jsonencode(var.mdns)
      seeds                = jsonencode(var.seeds)
      authority_public_key = jsonencode(var.authority_public_key)
      zones                = jsonencode(var.zones)
    })
  }

  user_data = {
    for name, node_id in var.nodes : name => templatefile("${path.module}/templates/user-data.yaml.tftpl", {
      node_name       = name
      node_id         = node_id
      packages        = length(var.os_packages) > 0 ? "packages: ${jsonencode(var.os_packages)}" : ""
      unit_b64        = base64encode(local.unit)
      config_b64      = base64encode(local.config[name])
      node_key_b64    = base64encode(var.node_keys[name])
      certificate_b64 = base64encode(var.certificates[name])
      pip_install     = jsonencode(concat(["/opt/vsmcp/venv/bin/pip", "install", "--quiet"], var.pip_args, [var.package]))
    })
  }
}
