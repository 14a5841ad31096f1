"""Wire contracts: the CloudEvents envelope, the data of each input topic and the output records."""
