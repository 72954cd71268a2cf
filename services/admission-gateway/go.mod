module github.com/piggysec/piggy/services/admission-gateway

go 1.26.0
