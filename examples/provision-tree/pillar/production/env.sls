environment: production
domain: www.example.com
