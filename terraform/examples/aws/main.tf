# Three (or N) hosts in one private subnet, each a vsmcp node, joined through the first
# host's fixed address. Names, ids, keys and certificates come from var.nodes & co.

locals {
  names = sort(keys(var.nodes))
  # Fixed private addresses: the seeds must be known before the hosts exist.
  addresses = { for i, name in local.names : name => cidrhost(data.aws_subnet.mesh.cidr_block, 10 + i) }
}

data "aws_subnet" "mesh" {
  id = var.subnet_id
}

module "vsmcp" {
  source = "../../modules/vsmcp-node"

  nodes                = var.nodes
  node_keys            = var.node_keys
  certificates         = var.certificates
  authority_public_key = var.authority_public_key
  mesh_name            = var.mesh_name
  mesh_host            = "ens5" # the first interface of Nitro instances
  seeds                = [for name in local.names : "${local.addresses[name]}:7701"]
}

resource "aws_security_group" "mesh" {
  name        = "vsmcp-mesh"
  description = "vsmcp mesh: peers reach each other on 7701 (TCP and UDP); operators on SSH"
  vpc_id      = var.vpc_id

  ingress {
    description = "mesh (ZeroMQ) from the mesh's hosts"
    from_port   = 7701
    to_port     = 7701
    protocol    = "tcp"
    self        = true
  }

  ingress {
    description = "whois (UDP) from the mesh's hosts"
    from_port   = 7701
    to_port     = 7701
    protocol    = "udp"
    self        = true
  }

  ingress {
    description = "SSH from the operators' range"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.admin_cidr]
  }

  egress {
    description = "mesh to the mesh's hosts"
    from_port   = 7701
    to_port     = 7701
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "whois to the mesh's hosts"
    from_port   = 7701
    to_port     = 7701
    protocol    = "udp"
    self        = true
  }

  egress {
    description = "HTTPS for the package index and the distribution's mirror at first boot"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "HTTP for the distribution's mirror at first boot"
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "node" {
  for_each = var.nodes

  ami                         = var.ami_id
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_id
  private_ip                  = local.addresses[each.key]
  associate_public_ip_address = false
  vpc_security_group_ids      = [aws_security_group.mesh.id]
  iam_instance_profile        = var.instance_profile
  monitoring                  = true
  ebs_optimized               = true
  user_data                   = module.vsmcp.user_data[each.key]
  # A changed key, certificate or config means a new host, not an edited one.
  user_data_replace_on_change = true

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required" # IMDSv2 only: user-data carries the node key
  }

  root_block_device {
    encrypted   = true
    volume_size = 16
  }

  tags = {
    Name        = "vsmcp-${each.key}"
    vsmcp_node  = each.value
    vsmcp_mesh  = var.mesh_name
  }
}
