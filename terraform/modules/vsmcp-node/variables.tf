variable "nodes" {
  description = "The mesh's hosts: name => node id. Make each key on a trusted machine (`vsmcp keys node --data-dir DIR --json`) and issue its certificate there (`vsmcp keys issue`)."
  type        = map(string)

  validation {
    condition     = alltrue([for id in values(var.nodes) : can(regex("^12D3KooW[1-9A-HJ-NP-Za-km-z]{44}$", id))])
    error_message = "nodes: every value must be a node id (12D3KooW..., printed by `vsmcp keys node --json`)."
  }
}

variable "node_keys" {
  description = "name => the node's key file (node.key, JSON) for every name in nodes; from a secret store. It travels in user-data: see README.md."
  type        = map(string)
  sensitive   = true
}

variable "certificates" {
  description = "name => the node's certificate (node.cert, PEM-like text from `vsmcp keys issue`) for every name in nodes."
  type        = map(string)
}

variable "authority_public_key" {
  description = "The mesh authority's PUBLIC key: 64 hex characters as printed by `vsmcp keys init-authority`, base64, or its node id. Never the authority's private key or a path."
  type        = string

  validation {
    condition     = can(regex("^([0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=|12D3KooW[1-9A-HJ-NP-Za-km-z]{44})$", var.authority_public_key))
    error_message = "authority_public_key must be the authority's public key (64 hex characters, base64 or its node id), not a path or a private key."
  }
}

variable "zones" {
  description = "The mesh's zones, lowest first (trust.zones)."
  type        = list(string)
  default     = ["public", "ops", "restricted"]
}

variable "mesh_name" {
  description = "Mesh name; only peers of the same name are admitted."
  type        = string
  default     = "default"
}

variable "mesh_host" {
  description = "Mesh bind and advertised address on every host: an interface name (eth0, ens5), an IP address or localhost."
  type        = string
  default     = "eth0"
}

variable "mesh_port" {
  description = "Mesh (ZeroMQ) TCP port; UDP whois on the same number."
  type        = number
  default     = 7701
}

variable "http_port" {
  description = "HTTP port on loopback (/healthz, /metrics, /api, /mcp)."
  type        = number
  default     = 7700
}

variable "seeds" {
  description = "Peers to join through: \"HOST:PORT\" or \"NODE_ID@HOST:PORT\" (e.g. the first hosts' addresses)."
  type        = list(string)
  default     = []
}

variable "mdns" {
  description = "Find peers by multicast DNS (most clouds drop multicast: use seeds)."
  type        = bool
  default     = false
}

variable "preset" {
  description = "Membership timing: local, lan or wan."
  type        = string
  default     = "lan"

  validation {
    condition     = contains(["local", "lan", "wan"], var.preset)
    error_message = "preset must be local, lan or wan."
  }
}

variable "package" {
  description = "pip requirement of vsmcp installed into /opt/vsmcp/venv."
  type        = string
  default     = "vsmcp==0.1.0"
}

variable "pip_args" {
  description = "Extra pip install arguments, e.g. [\"--no-index\", \"--find-links\", \"/opt/vsmcp/wheels\"] for an image with a wheelhouse baked in."
  type        = list(string)
  default     = []
}

variable "os_packages" {
  description = "Debian/Ubuntu packages cloud-init installs first (needs the distribution's mirror); [] for an image that has them."
  type        = list(string)
  default     = ["python3-venv"]
}
