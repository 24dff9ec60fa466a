terraform {
  # Provider-agnostic: this module only renders cloud-init user-data.
  required_version = ">= 1.5"
}
