# The page a person reads: tables and pictures of this run.


rule report:
    input:
        ar=result("val/ar.json"),
        plot=result("val/recall_iou.png"),
    output:
        result("report.md"),
    log:
        log_file("report"),
    benchmark:
        benchmark_file("report")
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=CONFIG_FILE,
    shell:
        "ifcn report --config {params.config} --ar {input.ar} --out {output} > {log} 2>&1"
