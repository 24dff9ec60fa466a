variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-central-1"
}

variable "vpc_id" {
  description = "VPC of the mesh."
  type        = string
}

variable "subnet_id" {
  description = "Private subnet of the hosts (no public addresses)."
  type        = string
}

variable "ami_id" {
  description = "A Debian 12 or Ubuntu 24.04 AMI with cloud-init."
  type        = string
}

variable "instance_type" {
  description = "Instance type (2 vCPU is plenty for one node)."
  type        = string
  default     = "t3.small"
}

variable "instance_profile" {
  description = "IAM instance profile of the hosts (least privilege: the node needs no AWS API)."
  type        = string
}

variable "admin_cidr" {
  description = "Where operators reach the hosts' SSH from (a bastion's or VPN's range)."
  type        = string
}

variable "nodes" {
  description = "name => node id, as for the module."
  type        = map(string)
}

variable "node_keys" {
  description = "name => node.key contents (from a secret store)."
  type        = map(string)
  sensitive   = true
}

variable "certificates" {
  description = "name => node.cert contents."
  type        = map(string)
}

variable "authority_public_key" {
  description = "The mesh authority's public key (hex)."
  type        = string
}

variable "mesh_name" {
  description = "Mesh name."
  type        = string
  default     = "prod"
}
