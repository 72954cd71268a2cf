#!/bin/sh
# LocalStack ready hook (/etc/localstack/init/ready.d): demo values for the
# compose stack. The secret name is the proxy-mode default of the "default"
# service account in namespace "demo" (<namespace>/<serviceAccount>).
set -eu
awslocal secretsmanager create-secret --name demo/default \
  --secret-string '{"PASSWORD":"s3cr3t","API_KEY":"local-api-key"}' >/dev/null 2>&1 ||
  awslocal secretsmanager put-secret-value --secret-id demo/default \
    --secret-string '{"PASSWORD":"s3cr3t","API_KEY":"local-api-key"}' >/dev/null
awslocal ssm put-parameter --name /demo/DB_HOST --type String --value db.demo.local --overwrite >/dev/null
awslocal ssm put-parameter --name /demo/DB_PASSWORD --type SecureString --value ssm-s3cr3t --overwrite >/dev/null
echo "piggy: seeded demo/default (Secrets Manager) and /demo/* (SSM)"
