output "node_ids" {
  description = "name => node id."
  value       = module.vsmcp.node_ids
}

output "addresses" {
  description = "name => private IP address (mesh on port 7701)."
  value       = { for name, host in aws_instance.node : name => host.private_ip }
}

output "instance_ids" {
  description = "name => EC2 instance id."
  value       = { for name, host in aws_instance.node : name => host.id }
}
