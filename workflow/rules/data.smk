# Datasets: everything downstream reads a COCO instances JSON and an image folder.


if DATA["dataset"] == "synthetic":

    rule synth:
        output:
            train=DATA["train_json"],
            val=DATA["val_json"],
        log:
            log_file("synth"),
        benchmark:
            benchmark_file("synth")
        conda:
            "../../environment.yml"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=20,
        params:
            root=parent_of_output("train"),
            synth=DATA["synth"],
        shell:
            "ifcn data synth --out {params.root} --seed {params.synth[seed]}"
            " --num-train {params.synth[num_train]} --num-val {params.synth[num_val]}"
            " --min-side {params.synth[min_side]} --max-side {params.synth[max_side]}"
            " --min-objects {params.synth[min_objects]} --max-objects {params.synth[max_objects]}"
            " --workers {threads} > {log} 2>&1"

else:

    # Downloads need the internet, which cluster compute nodes often lack: they run where
    # Snakemake runs.
    localrules:
        download,

    rule download:
        output:
            touch(download_flag("{name}")),
        log:
            log_file("download_{name}"),
        benchmark:
            benchmark_file("download_{name}")
        conda:
            "../../environment.yml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=600,
        params:
            root=DATA["root"],
        shell:
            "ifcn data download --dataset {wildcards.name} --out {params.root} > {log} 2>&1"

    rule convert_train:
        input:
            download_flags,
        output:
            DATA["train_json"],
        log:
            log_file("convert_train"),
        benchmark:
            benchmark_file("convert_train")
        conda:
            "../../environment.yml"
        threads: 4
        resources:
            mem_mb=16000,
            runtime=240,
        params:
            source=convert_arguments("train"),
        shell:
            "ifcn data convert {params.source} --workers {threads} --out {output} > {log} 2>&1"

    rule convert_val:
        input:
            download_flags,
        output:
            DATA["val_json"],
        log:
            log_file("convert_val"),
        benchmark:
            benchmark_file("convert_val")
        conda:
            "../../environment.yml"
        threads: 4
        resources:
            mem_mb=16000,
            runtime=240,
        params:
            source=convert_arguments("val"),
        shell:
            "ifcn data convert {params.source} --workers {threads} --out {output} > {log} 2>&1"
