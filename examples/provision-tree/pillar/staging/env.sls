environment: staging
domain: staging.example.com
