module devex/starter

go 1.21
