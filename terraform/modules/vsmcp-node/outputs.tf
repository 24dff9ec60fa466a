output "user_data" {
  description = "name => cloud-init user-data (#cloud-config) for that host. Sensitive: it carries the node key."
  value       = local.user_data
  sensitive   = true
}

output "node_ids" {
  description = "name => node id."
  value       = var.nodes
}
